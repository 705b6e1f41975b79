"""An experiment's resolved views: its variants (plain and progressive chains), the run facts every
job logs, lengths and corpora. Everything here reads a validated config and imports no torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from longctx.config.schema import deep_merge
from longctx.rope.registry import length_at


def scale_text(scale) -> str:
    """4.0 -> "4", 2.5 -> "2.5": how a scale reads in names."""
    scale = float(scale)
    return str(int(scale)) if scale.is_integer() else f"{scale:g}"


def variant_name(method: str, scale, search: bool = False, finetune: bool = False) -> str:
    """``<method>-x<scale>``, ``-search`` when searched, ``-ft`` when fine-tuned (e.g. ``pi-x4-ft``)."""
    return f"{method}-x{scale_text(scale)}" + ("-search" if search else "") + ("-ft" if finetune else "")


def eval_scale_name(name: str, scale) -> str:
    """``pi-x4-ft`` evaluated at scale 8 -> ``pi-x4-ft@x8`` (a valid wildcard and file name)."""
    return f"{name}@x{scale_text(scale)}"


@dataclass(frozen=True)
class Variant:
    """One model variant: a RoPE method at a scale, maybe fine-tuned, maybe with searched factors."""

    name: str
    method: str
    scale: float
    params: dict
    finetune: bool
    search: bool
    # progressive LongRoPE chains (``chain_variants``); the defaults describe a plain variant
    start: str | None = None  # the fine-tuned variant whose weights this one starts from (None: the base model)
    # the fine-tuned variant whose weights its factors are searched on (None: the base model); a chain
    # step that searches on the base model and fine-tunes from an earlier step's weights differs from start
    search_start: str | None = None
    finetune_steps: int | None = None  # a chain step's fine-tune steps (None: finetune.steps)
    chain: str | None = None  # the chain this variant is a stage of
    recovery_of: str | None = None  # recovery stage: the chain step whose long factors it completes
    recovery_lengths: tuple = ()  # recovery stage: the lengths of its short factor sets
    recovery_lambda_max: float | None = None  # recovery stage: the bound of lambda (None: that of each length)
    # this variant's own settings over the experiment's `search` / `finetune` sections (e.g. LongRoPE2's
    # needle fitness and critical-dimension search, its mixed context window training)
    search_settings: dict = field(default_factory=dict)
    finetune_settings: dict = field(default_factory=dict)
    # an evaluation-scale variant (config `eval_scales`): the scale its weights (`start`) were
    # fine-tuned at; it evaluates them with its method at `scale` (Giraffe's evaluation scale)
    trained_scale: float | None = None
    # an instruction-tuned variant (config ``instruct``, Giraffe): the variant whose weights it tunes
    instruct_of: str | None = None
    # its weights are instruction-tuned: an instruct variant, or an evaluation scale of one (the report
    # sets IFT rows beside these only)
    instruction_tuned: bool = False

    def target_length(self, original_context: int) -> int:
        """The length this variant extends to: scale x the original context."""
        return length_at(self.scale, original_context)

    @classmethod
    def from_dict(cls, d: dict) -> "Variant":
        """Back from its JSON form (``asdict``), as a job receives it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"variant: unknown fields {unknown}")
        d = dict(d)
        d["recovery_lengths"] = tuple(d.get("recovery_lengths") or ())
        d["scale"] = float(d["scale"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def spec(self) -> dict:
        return {"method": self.method, "scale": self.scale, "params": self.params}


BASE = Variant(name="base", method="none", scale=1.0, params={}, finetune=False, search=False)


def variants(config: dict) -> list[Variant]:
    """All variants, the base model first."""
    out = [BASE]
    for v in config["variants"]:
        search, finetune = v["search"] is not False, v["finetune"] is not False
        name = v["name"] or variant_name(v["method"], v["scale"], search, finetune)
        out.append(Variant(name, v["method"], float(v["scale"]), dict(v["params"]), finetune, search,
                           search_settings=overrides(v["search"]), finetune_settings=overrides(v["finetune"])))
        for scale in v.get("eval_scales") or ():
            out.append(Variant(eval_scale_name(name, scale), v["method"], float(scale), dict(v["params"]),
                               finetune=False, search=False, start=name, trained_scale=float(v["scale"])))
    if config.get("progressive"):
        out += chain_variants(config, original_context(config))
    return out + instruct_variants(config, out)


IFT_SUFFIX = "-ift"


def instruct_variants(config: dict, variants: list[Variant]) -> list[Variant]:
    """``<variant>-ift`` for each variant ``instruct.variants`` names (Giraffe's instruction
    fine-tune): the same RoPE, its own weights (the source's, tuned on conversations), evaluated
    and reported as a variant of its own; and, where the source has evaluation scales
    (``eval_scales``), ``<variant>-ift@x<scale>`` on the instruction-tuned weights (Giraffe's IFT
    model evaluated at scale 8)."""
    section = config.get("instruct") or {}
    by_name = {v.name: v for v in variants}
    out = []
    for name in section.get("variants") or []:
        v = by_name.get(name)
        if v is None:  # named by the config check (config key instruct.variants)
            continue
        tuned = name + IFT_SUFFIX
        out.append(Variant(tuned, v.method, v.scale, dict(v.params), finetune=False, search=False,
                           instruct_of=name, instruction_tuned=True))
        out += [replace(e, name=eval_scale_name(tuned, e.scale), start=tuned, instruction_tuned=True)
                for e in variants if e.trained_scale is not None and e.start == name]
    return out


def task_settings(config: dict, variant: Variant, task: dict) -> dict:
    """The training settings of a task fine-tune (``evaluate.govreport.finetune``, ``instruct``) of a
    variant: the variant's ``finetune`` settings, then the task's own where set (null: inherited)."""
    own = {k: v for k, v in task.items() if k not in ("variants", "dataset", "template", "split", "max_examples")
           and v is not None}
    base = {k: v for k, v in finetune_settings_for(config, variant).items() if k not in ("length", "steps")}
    return deep_merge(base, {"length": None, **own})


def overrides(value) -> dict:
    """A variant's ``search:`` / ``finetune:`` value as settings overrides: ``true``/``false`` -> {}."""
    return dict(value) if isinstance(value, dict) else {}


def search_settings_for(config: dict, variant: Variant) -> dict:
    """The search settings a variant's search runs with: the `search` section, then its own."""
    section = {k: v for k, v in config["search"].items() if k not in ("corpus", "split")}
    return deep_merge(section, variant.search_settings)


def finetune_settings_for(config: dict, variant: Variant) -> dict:
    """The fine-tuning settings a variant trains with: the `finetune` section, then its own."""
    return deep_merge({k: v for k, v in config["finetune"].items() if k != "corpus"}, variant.finetune_settings)


def short_corpus(config: dict, variant: Variant) -> str | None:
    """The corpus of a variant's short context windows (LongRoPE2's mixed context window training):
    ``finetune.mixed_context.short_corpus``, else the fine-tuning corpus; None when it trains without."""
    mixed = finetune_settings_for(config, variant)["mixed_context"]
    if not (variant.finetune and mixed["enabled"]):
        return None
    return mixed["short_corpus"] or train_corpus(config, "finetune")


# factor sets a variant carries from an earlier search, not what it searches with
SEARCH_RESULT_PARAMS = ("factors", "n_hat", "factor_sets")


def search_owners(variants: list[Variant]) -> dict[str, str]:
    """Each searched variant -> the variant whose search it uses.

    Two variants that search the same weights (``search_start``) at the same scale with the same method
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
        key = (v.search_start, v.method, v.scale, json.dumps(params, sort_keys=True),
               json.dumps(v.search_settings, sort_keys=True))
        owners[v.name] = first.setdefault(key, v.name)
    return owners


@dataclass(frozen=True)
class RunInfo:
    """The facts of an experiment every job logs and uses: its name, the model, L and the seed."""

    experiment: str
    model_source: str
    model: str
    original_context: int
    seed: int
    # model.sliding_window: how every stage sets a sliding attention window (longctx.models.widen_sliding_window)
    sliding_window: str | int = "widen"

    @classmethod
    def of(cls, config: dict) -> "RunInfo":
        return cls(experiment=config["experiment"], model_source=config["model"]["source"],
                   model=config["model"]["name_or_path"] or "pretrain", original_context=original_context(config),
                   seed=config["seed"], sliding_window=config["model"]["sliding_window"])

    @classmethod
    def from_dict(cls, d: dict) -> "RunInfo":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


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
    return sorted({length_at(m, L) for m in ev["length_multiples"]})


def first_corpus(config: dict) -> str:
    return next(iter(config["corpora"]))


def train_corpus(config: dict, stage: str) -> str:
    """Corpus used for training in ``stage`` (``pretrain`` or ``finetune``)."""
    if stage == "finetune" and config["finetune"]["corpus"]:
        return config["finetune"]["corpus"]
    return config["model"]["pretrain"]["corpus"] or first_corpus(config)


def eval_corpus(config: dict) -> str:
    return config["evaluate"]["perplexity"]["corpus"] or first_corpus(config)


def search_corpus(config: dict) -> str:
    return config["search"]["corpus"] or eval_corpus(config)




# --- LongRoPE's progressive extension (paper section 3.3) as variants ---------------------------------


def chain_name(config: dict, index: int) -> str:
    chain = config["progressive"][index]
    if chain["name"]:
        return chain["name"]
    return "longrope-chain" if len(config["progressive"]) == 1 else f"longrope-chain{index + 1}"


def chain_variants(config: dict, original_context: int) -> list:
    """The variants of every chain, in DAG order: its steps, then its recovered final model.

    A chain (config ``progressive``) is a list of steps (scale, fine-tune steps or none, the weights its
    search runs on and those it fine-tunes from) and a list of short-context recovery lengths. It
    resolves into ordinary variants, so every stage is evaluated and reported like any other:

    - a step searches at ``s x L`` on the base model (``search_on: base``), or on the weights of the
      last fine-tuned step (``finetuned``): a secondary search whose factors multiply those the
      weights were fine-tuned with (``lambda_ft * lambda'``); by default (null) the paper's recipe,
      ``base`` for a step that fine-tunes and ``finetuned`` for one that only searches;
    - a step with ``finetune_steps`` then fine-tunes with its factors from the last fine-tuned step's
      weights (or the base model: ``finetune_from: base``); later steps start from its weights; a
      step without fine-tuning runs on the weights it was searched on;
    - recovery: on the final weights, search a factor set for each recovery length (sequences of at
      most that many tokens), with the lower maximum lambda of that length; the final variant carries
      all its factor sets (``longrope`` ``factor_sets`` with ``max_length``) and picks one by sequence
      length.

    The paper's Llama 2 recipe (section 3.3):

        longrope-llama2-x32-ft        search at 128k on base, fine-tune at 128k from base
        longrope-llama2-x64-ft        search at 256k on base, fine-tune at 256k from the x32-ft weights
        longrope-llama2-x512          secondary search at 2048k on the x64-ft weights
        longrope-llama2-x512-recovery + factor sets for sequences up to 4k and 8k, searched on them
    """
    out = []
    for index, chain in enumerate(config["progressive"]):
        name = chain_name(config, index)
        tuned = None  # the last fine-tuned step: the weights later steps start from
        last = None
        for step in chain["steps"]:
            finetune = step["finetune_steps"] is not None
            search_start = tuned if step_searches_on(step, tuned) == "finetuned" else None
            start = (None if step["finetune_from"] == "base" else tuned) if finetune else search_start
            variant = Variant(
                name=f"{name}-x{scale_text(step['scale'])}" + ("-ft" if finetune else ""),
                method="longrope", scale=float(step["scale"]), params=dict(chain["params"]),
                finetune=finetune, search=True, start=start, search_start=search_start,
                finetune_steps=step["finetune_steps"], chain=name,
                search_settings=dict(chain["search"]), finetune_settings=dict(chain["finetune"]),
            )
            out.append(variant)
            last = variant
            if finetune:
                tuned = variant.name
        if chain["recovery"]:
            lengths = tuple(sorted({length_at(m, original_context) for m in chain["recovery"]}))
            final = last.name if last.finetune else last.start  # the final model's weights
            out.append(Variant(
                name=f"{last.name.removesuffix('-ft')}-recovery", method="longrope", scale=last.scale,
                params=dict(chain["params"]), finetune=False, search=True, start=final, search_start=final,
                chain=name, recovery_of=last.name, recovery_lengths=lengths,
                recovery_lambda_max=chain["recovery_lambda_max"], search_settings=dict(chain["search"]),
            ))
    return out


def step_searches_on(step: dict, tuned: str | None) -> str:
    """``base`` or ``finetuned``: a step's ``search_on``, or the paper's recipe where it is null - the
    factors a step fine-tunes with are searched on the base model (LongRoPE's 128k and 256k), a step
    that only searches extends the last fine-tuned weights (2048k). No fine-tuned step yet: base."""
    on = step["search_on"] or ("base" if step["finetune_steps"] is not None else "finetuned")
    return on if tuned else "base"
