"""Load, validate and resolve an experiment config.

The JSON schema (``schema.yaml`` beside this file) holds every key with its default and
description; ``load_config`` fills the defaults in, and errors name the offending key, e.g.
``config key 'variants[1].scale': ...``. Checks the schema cannot express (a method the registry
lacks, a target length not above the original context, a corpus that is not defined) follow.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """The config is wrong; the message names the key."""


def schema() -> dict:
    return yaml.safe_load(resources.files("longctx").joinpath("schema.yaml").read_text())


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if "propertyNames" in error.schema_path:  # a name of ours (corpus, split) that is not a plain word
        return (f"config key '{key}': the name {error.instance!r} is not allowed; names are letters, digits "
                f"and {'_' if key.endswith('splits') else '_ . -'} ({error.schema['pattern']})")
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{key}." if error.absolute_path else ""
        return f"config key '{prefix}{extra[0]}': unknown key (allowed here: {', '.join(sorted(error.schema.get('properties', {})))})"
    if error.validator == "required":
        missing = error.message.split("'")[1]
        prefix = f"{key}." if error.absolute_path else ""
        return f"config key '{prefix}{missing}': required but missing"
    return f"config key '{key}': {error.message}"


def validate(config: dict) -> dict:
    """Fill defaults into ``config`` (in place) and check it; returns it. Raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError("config: the top level must be a mapping of keys to values")
    errors = sorted(_Validator(schema()).iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _check_semantics(config)
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if overrides:
        config = deep_merge(config, overrides)
    return validate(config)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# --- resolved views used by the workflow ---------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One model variant: a RoPE method at a scale, maybe fine-tuned, maybe with searched factors."""

    name: str
    method: str
    scale: float
    params: dict
    finetune: bool
    search: bool
    # progressive LongRoPE chains (longctx.progressive); the defaults describe a plain variant
    start: str | None = None  # the fine-tuned variant whose weights this one starts from (None: the base model)
    finetune_steps: int | None = None  # a chain step's fine-tune steps (None: finetune.steps)
    chain: str | None = None  # the chain this variant is a stage of
    recovery_of: str | None = None  # recovery stage: the chain step whose long factors it completes
    recovery_lengths: tuple = ()  # recovery stage: the lengths of its short factor sets
    recovery_lambda_max: float | None = None  # recovery stage: the bound of lambda (None: that of each length)

    def target_length(self, original_context: int) -> int:
        return int(round(self.scale * original_context))

    @property
    def spec(self) -> dict:
        return {"method": self.method, "scale": self.scale, "params": self.params}


BASE = Variant(name="base", method="none", scale=1.0, params={}, finetune=False, search=False)


def variants(config: dict) -> list[Variant]:
    """All variants, the base model first."""
    out = [BASE]
    for v in config["variants"]:
        name = v["name"] or _default_name(v)
        out.append(Variant(name, v["method"], float(v["scale"]), dict(v["params"]), v["finetune"], v["search"]))
    if config.get("progressive"):
        from longctx.progressive import chain_variants

        out += chain_variants(config, original_context(config))
    return out


# factor sets a variant carries from an earlier search, not what it searches with
SEARCH_RESULT_PARAMS = ("factors", "n_hat", "factor_sets")


def search_owners(variants: list[Variant]) -> dict[str, str]:
    """Each searched variant -> the variant whose search it uses.

    Two variants that search the same weights (``start``) at the same scale with the same method
    parameters would run the same search (same data, settings and seed): the first of them owns it
    and the others read its factors - e.g. a standalone ``longrope-x4-search`` and a progressive
    chain's first step at 4x. A recovery search is always its own.
    """
    owners, first = {}, {}
    for v in variants:
        if not v.search:
            continue
        if v.recovery_of:
            owners[v.name] = v.name
            continue
        params = {k: p for k, p in v.params.items() if k not in SEARCH_RESULT_PARAMS}
        key = (v.start, v.method, v.scale, json.dumps(params, sort_keys=True))
        owners[v.name] = first.setdefault(key, v.name)
    return owners


def _default_name(v: dict) -> str:
    scale = v["scale"]
    scale = int(scale) if float(scale).is_integer() else scale
    return f"{v['method']}-x{scale}" + ("-search" if v["search"] else "") + ("-ft" if v["finetune"] else "")


def original_context(config: dict) -> int:
    model = config["model"]
    if model["source"] == "pretrain":
        return model["original_context"] or model["pretrain"]["context"]
    return model["original_context"]


def eval_lengths(config: dict) -> list[int]:
    ev = config["evaluate"]
    if ev["lengths"]:
        return sorted(set(ev["lengths"]))
    L = original_context(config)
    return sorted({int(round(m * L)) for m in ev["length_multiples"]})


def first_corpus(config: dict) -> str:
    return next(iter(config["corpora"]))


def train_corpus(config: dict, stage: str) -> str:
    """Corpus used for training in ``stage`` (``pretrain`` or ``finetune``)."""
    if stage == "finetune" and config["finetune"]["corpus"]:
        return config["finetune"]["corpus"]
    return config["model"]["pretrain"]["corpus"] or first_corpus(config)


def source_model_path(model: dict) -> Path | None:
    """The base model's file (gguf) or folder (local) on disk, from the ``model`` section; None for
    hub ids and pretraining. Existence is not checked: the rules list it as an input, so Snakemake
    names it when it is missing, and the loader says so too."""
    if model["source"] not in ("local", "gguf"):
        return None
    where = Path(model["name_or_path"])
    if model["source"] == "gguf" and model.get("gguf_file") and not where.is_file():
        return where / model["gguf_file"]
    return where


def eval_corpus(config: dict) -> str:
    return config["evaluate"]["perplexity"]["corpus"] or first_corpus(config)


def search_corpus(config: dict) -> str:
    return config["search"]["corpus"] or eval_corpus(config)


def _check_semantics(config: dict) -> None:
    from longctx.rope import RopeMethodError, method_names
    from longctx.rope.registry import resolve_params

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
        if v["search"] and v["method"] != "longrope":
            raise ConfigError(f"config key '{where}.search': only the longrope method is searched, not {v['method']!r}")
        name = v["name"] or _default_name(v)
        if name in names or name == "base":
            raise ConfigError(f"config key '{where}.name': variant name {name!r} is used twice (or is reserved: base)")
        names.add(name)
    if config["progressive"]:
        from longctx.progressive import chain_variants, check_chains

        check_chains(config, original_context(config))
        for i, v in enumerate(chain_variants(config, original_context(config))):
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
    from longctx import resources as _resources

    _resources.check(config)
    _check_splits(config)
    _check_evaluation_lengths(config)
    _check_local_files(config)


def _check_splits(config: dict) -> None:
    """Every split a stage reads is defined in its corpus."""
    all_variants = variants(config)
    needs = []  # (config key naming the corpus, corpus, split)
    if config["model"]["source"] == "pretrain":
        needs.append(("model.pretrain.corpus", train_corpus(config, "pretrain"), "train"))
    if any(v.finetune for v in all_variants):
        needs.append(("finetune.corpus", train_corpus(config, "finetune"), "train"))
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
    from longctx.evaluate import plan

    for name in plan.enabled_evaluations(config):
        fewest = plan.min_length(config, name)
        short = [n for n in plan.lengths_for(config, name) if n < fewest]
        if short:
            raise ConfigError(f"config key 'evaluate.{plan.section_of(name)}': length {short[0]} is below what "
                              f"{name} needs (at least {fewest} tokens for its prompt and answer); evaluate it at "
                              f"longer lengths (its `lengths`, or evaluate.lengths)")


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


def check_cuda_here() -> None:
    """``device: cuda`` for jobs that run on this machine: it must have a CUDA GPU (checked before any job)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda', but this machine has no CUDA GPU and the jobs run here; "
                          "use device: auto (or cpu), or submit to a cluster (--profile slurm)")


def stage_resources(config: dict, stage: str):
    """What one stage (a rule) asks a cluster for: a ``longctx.resources.StageResources``."""
    from longctx.resources import stage_resources as resolve

    return resolve(config, stage)
