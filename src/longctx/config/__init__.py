"""An experiment's config: read, validated against the schema with defaults, resolved.

- ``schema.yaml``: every key, its type, default and description (the config reference);
- ``schema``: reading a config and checking it against the schema, errors naming the key;
- ``validation``: ``validate`` / ``load_config`` - the schema, then what it cannot express;
- ``experiment``: the resolved views - variants (plain and LongRoPE's progressive chains),
  ``RunInfo``, lengths, corpora;
- ``evaluations``: which evaluations run, at which lengths, with which settings;
- ``resources``: what each stage asks a cluster for, and what a retry asks for;
- ``cluster``, ``attempts``, ``sizing``: what a SLURM cluster offers (sinfo) against what the jobs
  ask, how earlier attempts of a job ended, the exact sbatch lines; resources from benchmark files.

A config file is exactly what a run uses plus the schema's defaults (README: how configs combine).
"""

from longctx.config.experiment import (  # noqa: F401
    BASE,
    SEARCH_RESULT_PARAMS,
    RunInfo,
    Variant,
    chain_variants,
    eval_corpus,
    eval_lengths,
    finetune_settings_for,
    instruct_variants,
    task_settings,
    first_corpus,
    original_context,
    scale_text,
    search_corpus,
    search_owners,
    search_settings_for,
    short_corpus,
    train_corpus,
    variant_name,
    variants,
)
from longctx.config.schema import ConfigError, deep_merge, read_config, schema  # noqa: F401
from longctx.config.validation import check_cuda_here, load_config, validate  # noqa: F401
