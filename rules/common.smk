# Config validation and the helpers every rule file uses (paths, variants, params as JSON).
import json
import re
import os
import shlex
import sys

from longctx import config as lc
from longctx import evaluate
from longctx.config import evaluations as lc_eval
from longctx.config import cluster as lc_cluster
from longctx.config import resources as lc_resources
from longctx.models.sources import source_model_path
from longctx.tracking import ENV as WANDB_ENV, settings_env
from snakemake.logging import logger as snakemake_logger

try:
    lc.validate(config)
except lc.ConfigError as e:
    sys.stderr.write(f"Config error: {e}\n")
    sys.exit(1)


EXP = config["experiment"]
R = f"{config['results_dir']}/{EXP}"
# SLURM (docs/cluster.md): logs under the experiment, how earlier attempts ended (for retries), the
# partitions' limits; started by onstart when the jobs go to SLURM
SLURM = lc_cluster.SlurmRun(f"{R}/slurm_logs", notify=snakemake_logger.info)


onstart:
    # before the first job (never in a dry run): jobs that run on this machine need the GPU asked for;
    # jobs sent to SLURM must fit their partitions ($LONGCTX_SBATCH_PREVIEW: print their sbatch lines)
    try:
        if config["device"] == "cuda" and workflow.local_exec:
            lc.check_cuda_here()
        if workflow.executor_plugin.name == "slurm":
            SLURM.start(workflow, preview=bool(os.environ.get(lc_cluster.PREVIEW_ENV)))
    except lc_cluster.ClusterError as e:
        sys.stderr.write(f"Cluster error: {e}\n")
        sys.exit(1)
    except lc.ConfigError as e:
        sys.stderr.write(f"Config error: {e}\n")
        sys.exit(1)

L = lc.original_context(config)
LENGTHS = lc.eval_lengths(config)
VARIANTS = {v.name: v for v in lc.variants(config)}
FINETUNED = [n for n, v in VARIANTS.items() if v.finetune]
SEARCHED = [n for n, v in VARIANTS.items() if v.search]
RECOVERED = [n for n, v in VARIANTS.items() if v.recovery_of]  # progressive chains' final models
SEARCH_OWNER = lc.search_owners(list(VARIANTS.values()))  # identical searches run once
EVALS = lc_eval.enabled_evaluations(config)
EVAL_LENGTHS = {e: lc_eval.lengths_for(config, e) for e in EVALS}  # each evaluation's own lengths
EVAL_VARIANTS = {e: lc_eval.variants_for(config, e, list(VARIANTS)) for e in EVALS}  # and variants
PPL_CORPUS = lc.eval_corpus(config)

# jobs run `python -m longctx`: make `python` the interpreter running Snakemake (a .venv that was
# not activated, say); with --software-deployment-method conda the job's environment comes first
envvars:
    "PATH",


search_path = os.environ["PATH"]
os.environ.update(PATH=os.path.dirname(sys.executable) + os.pathsep + search_path)

# W&B settings reach jobs through the environment, not params: toggling W&B reruns nothing
os.environ[WANDB_ENV] = settings_env(config)

RUN = lc.RunInfo.of(config).to_dict()  # the facts every job logs (experiment, model, L, seed)


def q(obj):
    """A value as a shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def variant_dict(name):
    return VARIANTS[name].to_dict()


def model_dir(name):
    """The weights a variant runs on: its fine-tuned (or instruction-tuned) folder, or those it starts from."""
    v = VARIANTS[name]
    return f"{R}/models/{name}" if v.finetune or v.instruct_of else start_dir(name)


# task fine-tunes (rules/finetune.smk): PI's GovReport fine-tune of the variants it names, read by
# their GovReport evaluation only; Giraffe's instruction-tuned variants (<variant>-ift)
GOVREPORT = config["evaluate"]["govreport"]
TASK_TUNED = {"govreport": list(GOVREPORT["finetune"]["variants"])}
INSTRUCTED = [n for n, v in VARIANTS.items() if v.instruct_of]


def task_model_dir(variant, evaluation):
    """The weights an evaluation of a variant reads when they are fine-tuned for it, else None."""
    return f"{R}/task_models/{evaluation}/{variant}" if variant in TASK_TUNED.get(evaluation, ()) else None


def start_dir(name):
    """The weights a variant fine-tunes from, or runs on when it does not fine-tune: the base model,
    or (a progressive chain's later stage) the fine-tuned folder of an earlier step."""
    start = VARIANTS[name].start
    return f"{R}/models/{start}" if start else f"{R}/models/base"


def search_dir(name):
    """The weights a variant's factors are searched on: the base model, or a progressive chain's
    fine-tuned step (a chain step may search on the base model and fine-tune from another step's)."""
    start = VARIANTS[name].search_start
    return f"{R}/models/{start}" if start else f"{R}/models/base"


def option(flag, value):
    """Shell words for an optional ``--flag value`` (quoted by the rule's ``:q``), or none."""
    return [flag, value] if value else []


def base_factors_file(name):
    """A chain's secondary search multiplies the factors the weights it searches on were fine-tuned with."""
    start = VARIANTS[name].search_start
    return factors_file(start) if start else []


def factors_file(name):
    """A searched variant's factors: its own search's, or those of the variant that ran the same search."""
    return f"{R}/search/{SEARCH_OWNER[name]}/factors.json" if VARIANTS[name].search else []


def token_files(corpus, split):
    return multiext(f"{R}/data/{corpus}/{split}", ".bin", ".idx.npy", ".json")


FT_CORPUS = lc.train_corpus(config, "finetune")


def short_token_files(name):
    """The train split of a variant's short-window corpus (LongRoPE2's mixed context windows), when
    it is not the fine-tuning corpus."""
    corpus = lc.short_corpus(config, VARIANTS[name])
    return token_files(corpus, "train") if corpus and corpus != FT_CORPUS else []


def source_model_files():
    """The base model's file or folder when it is on disk (gguf, local): an input of the rules that
    read it, so replacing it rebuilds the tokenizer and the base model. Hub ids and pretraining: none."""
    path = source_model_path(config["model"])
    return [str(path)] if path else []


# --- cluster resources and launchers (docs/cluster.md) ---


def stage_resources(stage):
    """A rule's `resources:` from config `resources.<stage>`; a retry grows the time limit only after
    a TIMEOUT and the memory only after OUT_OF_MEMORY (how the last attempt ended: SLURM.ends)."""
    return lc_resources.stage_resources(config, stage).snakemake_resources(SLURM.ends, SLURM.limits, SLURM.notify)


def stage_threads(stage):
    return lc_resources.stage_resources(config, stage).cpus


def launcher(data_parallel):
    """params: what stands for `python -m longctx` in a GPU rule, built from the job's resources:
    plain python, `accelerate launch` over one node's GPUs, or srun + torchrun over several nodes."""
    from longctx.launch import from_resources

    return lambda wildcards, resources: from_resources(resources, data_parallel)


def eval_json(variant, evaluation, length):
    """One evaluation result (also a pattern, given "{variant}", "{eval}", "{length}")."""
    return f"{R}/eval/{variant}/{evaluation}-{length}.json"


def eval_result_files():
    """Every evaluation JSON the report gathers: each enabled evaluation at its own lengths, on its variants."""
    return [eval_json(v, e, n) for e in EVALS for v in EVAL_VARIANTS[e] for n in EVAL_LENGTHS[e]]


def one_of(names):
    return "|".join(map(re.escape, names)) if names else "(?!)"


wildcard_constraints:
    variant=one_of(VARIANTS),
    corpus=one_of(config["corpora"]),
    split=r"[A-Za-z0-9_]+",
    length=r"\d+",


# --- evaluation inputs (rules/evaluate.smk) ---
PPL = config["evaluate"]["perplexity"]
# each evaluation's keyword arguments (longctx.config.evaluations); hub datasets load inside the job
EVAL_SETTINGS = {e: lc_eval.settings_for(config, e) for e in EVALS}
# evaluations that read the perplexity corpus' token files (their registry entries say so)
READS_TOKENS = {e for e in EVALS if evaluate.entries()[e].reads_tokens}


PPL_DATA = f"{R}/data/{PPL_CORPUS}/{PPL['split']}"  # the token files' prefix


def eval_data_prefix(name):
    return PPL_DATA if name in READS_TOKENS else None


def variant_eval_plans():
    """evaluate.one_job_per: variant - per variant, what its job runs: each enabled evaluation on it,
    with its lengths, output JSONs, settings, and whether it reads the perplexity corpus' tokens."""
    plans = {}
    for name in VARIANTS:
        plans[name] = [{"evaluation": e, "lengths": EVAL_LENGTHS[e], "settings": EVAL_SETTINGS[e],
                        "outs": [eval_json(name, e, n) for n in EVAL_LENGTHS[e]],
                        "reads_data": e in READS_TOKENS,
                        **({"model": task_model_dir(name, e)} if task_model_dir(name, e) else {})}
                       for e in EVALS if name in EVAL_VARIANTS[e]]
    return {name: plan for name, plan in plans.items() if plan}


def eval_inputs(w, name=None):
    """An evaluate job's inputs: the variant's model and factors, and the token files where its
    evaluation reads them (``name``: the evaluation, else the ``eval`` wildcard)."""
    name = name or w.eval
    inputs = {"model": model_dir(w.variant), "factors": factors_file(w.variant)}
    if task_model_dir(w.variant, name):
        inputs["task_model"] = task_model_dir(w.variant, name)
    if name in READS_TOKENS:
        inputs["data"] = token_files(PPL_CORPUS, PPL["split"])
    return inputs
