"""Validating a config: the schema (types, defaults, unknown keys), then what the schema cannot
express - a method the registry lacks, a target length not above the original context, a corpus or
split that is not defined, local files that do not exist, evaluation lengths too short for their
prompts, cluster requests that cannot be scheduled. Every error names its config key."""

from __future__ import annotations

import copy
import math
from pathlib import Path

from longctx.config import evaluations as plan
from longctx.config import resources
from longctx.config.experiment import (chain_name, chain_variants, eval_corpus, eval_scale_name, finetune_settings_for,
                                       original_context, search_corpus, search_settings_for, short_corpus,
                                       task_settings, train_corpus, variant_name, variants)
from longctx.config.schema import ConfigError, deep_merge, read_config, validate_schema
from longctx.rope import RopeMethodError, method_names
from longctx.rope.registry import length_at, resolve_params


def validate(config: dict) -> dict:
    """Fill defaults into ``config`` (in place) and check it; returns it. Raises ConfigError."""
    validate_schema(config)
    _check_semantics(config)
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """The validated config at ``path`` (``overrides`` merged in first), every default filled in."""
    return validate(read_config(path, overrides))


def _check_semantics(config: dict) -> None:
    model = config["model"]
    corpora = config["corpora"]
    if model["source"] == "pretrain":
        pre = model["pretrain"]
        if pre["corpus"] is not None and pre["corpus"] not in corpora:
            raise ConfigError(f"config key 'model.pretrain.corpus': no corpus named {pre['corpus']!r} in 'corpora'")
        if pre["hidden_size"] % pre["num_heads"] or (pre["hidden_size"] // pre["num_heads"]) % 2:
            raise ConfigError("config key 'model.pretrain.num_heads': hidden_size / num_heads must be an even integer (the head dimension)")
        if pre["num_heads"] % pre["num_kv_heads"]:
            raise ConfigError("config key 'model.pretrain.num_kv_heads': must divide num_heads")
    else:
        if not model["name_or_path"]:
            raise ConfigError(f"config key 'model.name_or_path': required when model.source is {model['source']!r}")
        if not model["original_context"]:
            raise ConfigError(f"config key 'model.original_context': required when model.source is {model['source']!r}")
    for name, corpus in corpora.items():
        where = f"corpora.{name}"
        if corpus["source"] == "local" and not corpus["root"]:
            raise ConfigError(f"config key '{where}.root': required for a local corpus")
        if corpus["source"] == "hub" and not corpus["hub_path"]:
            raise ConfigError(f"config key '{where}.hub_path': required for a hub corpus")
    for key in ("finetune.corpus", "search.corpus", "evaluate.perplexity.corpus"):
        section, *rest = key.split(".")
        value = config[section]
        for part in rest:
            value = value[part]
        if value is not None and value not in corpora:
            raise ConfigError(f"config key '{key}': no corpus named {value!r} in 'corpora'")

    names = set()
    known = method_names()
    for i, v in enumerate(config["variants"]):
        where = f"variants[{i}]"
        if v["method"] not in known:
            raise ConfigError(f"config key '{where}.method': unknown RoPE method {v['method']!r}; known: {', '.join(known)}")
        if not (isinstance(v["scale"], (int, float)) and math.isfinite(v["scale"]) and v["scale"] > 1):
            L = original_context(config)
            target = v["scale"] * L if isinstance(v["scale"], (int, float)) else v["scale"]
            raise ConfigError(
                f"config key '{where}.scale': the target length ({target}) must be above the original context ({L}); "
                f"scale must be > 1, got {v['scale']!r}"
            )
        try:
            resolve_params(v["method"], v["params"])
        except RopeMethodError as e:
            raise ConfigError(f"config key '{where}.params': {e}") from None
        if v["search"] is not False and v["method"] != "longrope":
            raise ConfigError(f"config key '{where}.search': only the longrope method is searched, not {v['method']!r}")
        for section in ("search", "finetune"):
            if isinstance(v[section], dict):
                _check_overrides(config, section, v[section], f"{where}.{section}")
        name = v["name"] or variant_name(v["method"], v["scale"], v["search"] is not False, v["finetune"] is not False)
        if name in names or name == "base":
            raise ConfigError(f"config key '{where}.name': variant name {name!r} is used twice (or is reserved: base)")
        names.add(name)
        for scale in v["eval_scales"]:
            _check_eval_scale(v, scale, f"{where}.eval_scales")
            names.add(eval_scale_name(name, scale))
    if config["progressive"]:
        for index, chain in enumerate(config["progressive"]):
            for section in ("search", "finetune"):
                _check_overrides(config, section, chain[section], f"progressive[{index}].{section}")
        check_chains(config, original_context(config))
        for v in chain_variants(config, original_context(config)):
            if v.name in names or v.name == "base":
                raise ConfigError(f"config key 'progressive': variant name {v.name!r} is used twice (or is reserved: "
                                  f"base); give the chain another name")
            names.add(v.name)
    lengths = config["evaluate"]["lengths"]
    if lengths is not None and not lengths:
        raise ConfigError("config key 'evaluate.lengths': give at least one length, or null")
    search = config["search"]
    if search["parents"] > search["population"]:
        raise ConfigError("config key 'search.parents': cannot exceed search.population")
    ft = config["finetune"]
    if ft["batch_size"] % ft["micro_batch_size"]:
        raise ConfigError(f"config key 'finetune.micro_batch_size': batch_size ({ft['batch_size']}) must be a "
                          f"multiple of micro_batch_size ({ft['micro_batch_size']})")
    _check_longrope2(config)
    resources.check(config)
    _check_splits(config)
    _check_evaluation_lengths(config)
    _check_perplexity_documents(config)
    _check_task_finetunes(config)
    _check_local_files(config)


def _check_splits(config: dict) -> None:
    """Every split a stage reads is defined in its corpus."""
    all_variants = variants(config)
    needs = []  # (config key naming the corpus, corpus, split)
    if config["model"]["source"] == "pretrain":
        needs.append(("model.pretrain.corpus", train_corpus(config, "pretrain"), "train"))
    if any(v.finetune for v in all_variants):
        needs.append(("finetune.corpus", train_corpus(config, "finetune"), "train"))
    for v in all_variants:
        if short_corpus(config, v):
            needs.append(("finetune.mixed_context.short_corpus", short_corpus(config, v), "train"))
    if any(v.search for v in all_variants):
        needs.append(("search.split", search_corpus(config), config["search"]["split"]))
    if config["evaluate"]["perplexity"]["enabled"]:
        needs.append(("evaluate.perplexity.split", eval_corpus(config), config["evaluate"]["perplexity"]["split"]))
    for key, corpus, split in needs:
        defined = config["corpora"][corpus]["splits"]
        if split not in defined:
            raise ConfigError(f"config key '{key}': corpus {corpus!r} has no split {split!r} "
                              f"(its splits: {', '.join(sorted(defined)) or 'none'}; see corpora.{corpus}.splits)")


def _check_evaluation_lengths(config: dict) -> None:
    """Each evaluation's lengths leave room for its shortest prompt (a lower bound, before any tokenizer)."""
    names = [v.name for v in variants(config)]
    for name in plan.enabled_evaluations(config):
        unknown = sorted(set(config["evaluate"][plan.section_of(name)].get("variants") or ()) - set(names))
        if unknown:
            raise ConfigError(f"config key 'evaluate.{plan.section_of(name)}.variants': no variant named "
                              f"{', '.join(map(repr, unknown))} (variants: {', '.join(names)})")
        fewest = plan.min_length(config, name)
        short = [n for n in plan.lengths_for(config, name) if n < fewest]
        if short:
            raise ConfigError(f"config key 'evaluate.{plan.section_of(name)}': length {short[0]} is below what "
                              f"{name} needs (at least {fewest} tokens for its prompt and answer); evaluate it at "
                              f"longer lengths (its `lengths`, or evaluate.lengths)")


def _check_perplexity_documents(config: dict) -> None:
    """``evaluate.perplexity.min_document_tokens`` (truncate mode) holds every perplexity length."""
    section = config["evaluate"]["perplexity"]
    floor = section["min_document_tokens"]
    if not section["enabled"] or floor is None:
        return
    if section["mode"] != "truncate":
        raise ConfigError("config key 'evaluate.perplexity.min_document_tokens': for mode truncate only; sliding "
                          "windows read the same documents at every length through evaluate.perplexity.document_tokens")
    largest = max([floor] if isinstance(floor, int) else floor)
    long = [n for n in plan.lengths_for(config, "perplexity") if n > largest]
    if long:
        raise ConfigError(f"config key 'evaluate.perplexity.min_document_tokens': {largest} is below the evaluation "
                          f"length {long[0]}; documents that short have no {long[0]} tokens to read (raise it, or "
                          f"evaluate perplexity at shorter lengths)")


def _check_task_finetunes(config: dict) -> None:
    """The variants a task fine-tune names exist; an instruction fine-tune has its conversations."""
    instruct = config["instruct"]
    names = [v.name for v in variants({**config, "instruct": {}})]
    govreport = config["evaluate"]["govreport"]["finetune"]
    for key, chosen in (("evaluate.govreport.finetune.variants", govreport["variants"]),
                        ("instruct.variants", instruct["variants"])):
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise ConfigError(f"config key '{key}': no variant named {', '.join(map(repr, unknown))} "
                              f"(variants: {', '.join(names)})")
    by_name = {v.name: v for v in variants(config)}
    for key, task in (("evaluate.govreport.finetune", config["evaluate"]["govreport"]["finetune"]),
                      ("instruct", instruct)):
        for name in task["variants"]:
            s = task_settings(config, by_name[name], task)
            if s["batch_size"] % s["micro_batch_size"]:
                raise ConfigError(f"config key '{key}.batch_size': {s['batch_size']} (for {name}) is not a multiple "
                                  f"of its micro_batch_size {s['micro_batch_size']}; set {key}.micro_batch_size")
    if instruct["variants"] and not instruct["dataset"]["path"]:
        raise ConfigError("config key 'instruct.dataset.path': instruct.variants are named but no conversations "
                          "are given (a hub dataset id, a local folder or a .json/.jsonl file)")


def _check_local_files(config: dict) -> None:
    """Local corpora exist (paths relative to the working directory). A missing model file or folder
    (gguf, local) is named by Snakemake itself, before any job: it is an input of the rules that read it."""
    for name, corpus in config["corpora"].items():
        if corpus["source"] != "local":
            continue
        root = Path(corpus["root"])
        if not root.is_dir():
            raise ConfigError(f"config key 'corpora.{name}.root': folder {root} does not exist "
                              f"(relative paths start at the working directory, {Path.cwd()})")
        for split, files in corpus["splits"].items():
            for file in [files] if isinstance(files, str) else files:
                if not (root / file).is_file():
                    raise ConfigError(f"config key 'corpora.{name}.splits.{split}': file {root / file} does not exist")


# keys an override cannot set: they choose a rule's inputs, which are per experiment
_PER_EXPERIMENT = {"search": ("corpus", "split"), "finetune": ("corpus",)}


def _check_overrides(config: dict, section: str, override: dict, where: str) -> None:
    """A variant's or chain's own ``search`` / ``finetune`` keys: known, of the right types (checked
    against the schema over the resolved section), and not the per-experiment ones."""
    for key in _PER_EXPERIMENT[section]:
        if key in override:
            raise ConfigError(f"config key '{where}.{key}': set per experiment ({section}.{key}), not per variant")
    probe = copy.deepcopy(config)
    probe[section] = deep_merge(config[section], override)
    try:
        validate_schema(probe)
    except ConfigError as e:
        raise ConfigError(str(e).replace(f"config key '{section}.", f"config key '{where}.", 1)) from None


def _check_eval_scale(v: dict, scale, key: str) -> None:
    """An evaluation scale re-applies a variant's method to its fine-tuned weights."""
    if v["finetune"] is False or v["search"] is not False:
        raise ConfigError(f"config key '{key}': an evaluation scale applies the method to the variant's fine-tuned "
                          f"weights; it needs finetune and no search")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 1 and scale != v["scale"]):
        raise ConfigError(f"config key '{key}': each must be a number >= 1 other than the variant's scale "
                          f"({v['scale']}), got {scale!r}")


def _check_longrope2(config: dict) -> None:
    """LongRoPE2's switches where they cannot apply, named by the key that turned them on."""
    owner = {(x["name"] or variant_name(x["method"], x["scale"], x["search"] is not False, x["finetune"] is not False)):
             f"variants[{i}]" for i, x in enumerate(config["variants"])}
    chains = {chain_name(config, i): f"progressive[{i}]" for i in range(len(config["progressive"]))}
    for v in variants(config)[1:]:
        if v.instruct_of:  # trained by the instruct section, not by finetune settings of its own
            continue
        own = chains[v.chain] if v.chain else owner.get(v.name, v.start)  # eval_scales: not fine-tuned
        if v.search and search_settings_for(config, v)["critical_dim"]["enabled"] and (v.search_start or v.recovery_of):
            key = f"{own}.search" if "critical_dim" in v.search_settings else "search"
            raise ConfigError(f"config key '{key}.critical_dim.enabled': LongRoPE2's critical-dimension search is "
                              f"one search on the base weights; {v.name} is a chain's "
                              f"{'recovery' if v.recovery_of else 'secondary'} search (give the chain one step and "
                              f"no recovery)")
        mixed = finetune_settings_for(config, v)["mixed_context"]
        if not (v.finetune and mixed["enabled"]):
            continue
        key = f"{own}.finetune" if "mixed_context" in v.finetune_settings else "finetune"
        if v.method != "longrope":
            raise ConfigError(f"config key '{key}.mixed_context.enabled': mixed context window training switches a "
                              f"longrope model between the original RoPE and its factors; {v.name} is {v.method} "
                              f"(turn it on per longrope variant: finetune: {{mixed_context: {{enabled: true}}}})")
        if mixed["short_corpus"] is not None and mixed["short_corpus"] not in config["corpora"]:
            raise ConfigError(f"config key '{key}.mixed_context.short_corpus': no corpus named "
                              f"{mixed['short_corpus']!r} in 'corpora'")


def check_cuda_here() -> None:
    """``device: cuda`` for jobs that run on this machine: it must have a CUDA GPU (checked before any job)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda', but this machine has no CUDA GPU and the jobs run here; "
                          "use device: auto (or cpu), or submit to a cluster (--profile slurm)")




def check_chains(config: dict, original_context: int) -> None:
    """Config mistakes in ``progressive``, each naming its key (raises ``ConfigError``)."""
    for index, chain in enumerate(config["progressive"]):
        where = f"progressive[{index}]"
        previous = 1.0
        for k, step in enumerate(chain["steps"]):
            scale = step["scale"]
            if not (isinstance(scale, (int, float)) and scale > previous):
                raise ConfigError(f"config key '{where}.steps[{k}].scale': must be above "
                                  f"{'1' if k == 0 else 'the previous step' + chr(39) + 's scale'} ({previous:g}), "
                                  f"got {scale!r}")
            previous = float(scale)
            if step["finetune_from"] == "base" and step["finetune_steps"] is None:
                raise ConfigError(f"config key '{where}.steps[{k}].finetune_from': only a step with finetune_steps "
                                  f"fine-tunes")
            if step["search_on"] == "finetuned" and not any(s["finetune_steps"] for s in chain["steps"][:k]):
                raise ConfigError(f"config key '{where}.steps[{k}].search_on': 'finetuned' searches on the last "
                                  f"fine-tuned step's weights, and no earlier step fine-tunes (use base)")
        for k, m in enumerate(chain["recovery"]):
            if not m < previous:
                raise ConfigError(f"config key '{where}.recovery[{k}]': a recovery length ({m:g} x L) must be below "
                                  f"the chain's last scale ({previous:g})")
            if length_at(m, original_context) < 2:
                raise ConfigError(f"config key '{where}.recovery[{k}]': {m:g} x L is under 2 tokens")
        if {"factors", "n_hat", "factor_sets", "short_factors"} & set(chain["params"]):
            raise ConfigError(f"config key '{where}.params': factors, n_hat and factor sets come from the searches")
        try:
            resolve_params("longrope", chain["params"])
        except RopeMethodError as e:
            raise ConfigError(f"config key '{where}.params': {e}") from None
