"""LongRoPE's progressive extension (paper section 3.3) as variants of the workflow.

A chain (config ``progressive``) is a list of steps ``(scale, fine-tune steps or none)`` and a list
of short-context recovery lengths. It resolves into ordinary variants, so every stage is
evaluated and reported like any other:

- step 1: search at ``s1 x L`` on the base model, then fine-tune at that length if asked;
- step k: search at ``sk x L`` on the weights of the last fine-tuned step, the new factors
  multiplying those the weights were fine-tuned with (secondary search, ``lambda_ft * lambda'``);
  fine-tune if asked (from those weights);
- recovery: on the final weights, search a factor set for each recovery length (sequences of at
  most that many tokens), with the lower maximum lambda of that length; the final variant carries
  all its factor sets (``longrope`` ``factor_sets`` with ``max_length``) and picks one by sequence
  length.

    longrope-chain-x4-ft        search at 4L on base, fine-tune at 4L
    longrope-chain-x8           secondary search at 8L on the 4L fine-tuned weights
    longrope-chain-x8-recovery  + factor set for sequences up to L, searched at L
"""

from __future__ import annotations

from longctx.rope import RopeGeometry
from longctx.search import SearchError, SearchTask, seed_factors, space_for


def _scale_text(scale: float) -> str:
    scale = float(scale)
    return str(int(scale)) if scale.is_integer() else f"{scale:g}"


def chain_name(config: dict, index: int) -> str:
    chain = config["progressive"][index]
    if chain["name"]:
        return chain["name"]
    return "longrope-chain" if len(config["progressive"]) == 1 else f"longrope-chain{index + 1}"


def chain_variants(config: dict, original_context: int) -> list:
    """The variants of every chain, in DAG order: its steps, then its recovered final model."""
    from longctx.config import Variant

    out = []
    for index, chain in enumerate(config["progressive"]):
        name = chain_name(config, index)
        start = None  # the last fine-tuned step: the weights later steps start from
        last = None
        for step in chain["steps"]:
            finetune = step["finetune_steps"] is not None
            variant = Variant(
                name=f"{name}-x{_scale_text(step['scale'])}" + ("-ft" if finetune else ""),
                method="longrope", scale=float(step["scale"]), params=dict(chain["params"]),
                finetune=finetune, search=True, start=start, finetune_steps=step["finetune_steps"], chain=name,
            )
            out.append(variant)
            last = variant
            if finetune:
                start = variant.name
        if chain["recovery"]:
            lengths = tuple(sorted({int(round(m * original_context)) for m in chain["recovery"]}))
            out.append(Variant(
                name=f"{last.name.removesuffix('-ft')}-recovery", method="longrope", scale=last.scale,
                params=dict(chain["params"]), finetune=False, search=True, start=start, chain=name,
                recovery_of=last.name, recovery_lengths=lengths, recovery_lambda_max=chain["recovery_lambda_max"],
            ))
    return out


def check_chains(config: dict, original_context: int) -> None:
    """Config mistakes in ``progressive``, each naming its key (raises ``ConfigError``)."""
    from longctx.config import ConfigError
    from longctx.rope import RopeMethodError
    from longctx.rope.registry import resolve_params

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
        for k, m in enumerate(chain["recovery"]):
            if not m < previous:
                raise ConfigError(f"config key '{where}.recovery[{k}]': a recovery length ({m:g} x L) must be below "
                                  f"the chain's last scale ({previous:g})")
            if int(round(m * original_context)) < 2:
                raise ConfigError(f"config key '{where}.recovery[{k}]': {m:g} x L is under 2 tokens")
        if {"factors", "n_hat", "factor_sets", "short_factors"} & set(chain["params"]):
            raise ConfigError(f"config key '{where}.params': factors, n_hat and factor sets come from the searches")
        try:
            resolve_params("longrope", chain["params"])
        except RopeMethodError as e:
            raise ConfigError(f"config key '{where}.params': {e}") from None


# --- the recovery stage ---------------------------------------------------------------------------


def recovery_task(geometry: RopeGeometry, length: int, final_scale: float, long_set: dict, settings: dict,
                  params: dict | None = None, lambda_max: float | None = None) -> SearchTask:
    """Search the factor set for sequences of at most ``length`` tokens of the final model.

    The model runs at ``final_scale`` (its mscale), the long set serves longer sequences. The
    space's bound is that of the recovery length (``lambda_max_ratio x length / L``), lower than
    the long search's, unless ``lambda_max`` says otherwise. Seeds: PI, NTK and YaRN at the
    recovery length (all 1 at L: the original RoPE) and the long factors clipped to the bound.
    """
    relative = max(length / geometry.original_context, 1.0)
    space = space_for(geometry, relative, settings, lambda_max)
    if space.lambda_max < space.lambda_min:
        raise SearchError(f"recovery search at {length}: lambda_max {space.lambda_max} is below 1")
    seeds = seed_factors(geometry, relative)
    seeds["long_clipped"] = [min(float(x), space.lambda_max) for x in long_set["factors"]]
    return SearchTask("recovery", length, float(final_scale), space, seeds, dict(params or {}),
                      long_set={"factors": list(long_set["factors"]), "n_hat": int(long_set["n_hat"])},
                      length_scale=length / geometry.original_context)


def final_record(long_record: dict, recoveries: list[dict], long_variant: str) -> dict:
    """The final model's ``factors.json``: every factor set, picked by sequence length.

    Its top-level search keys (history, factors, n_hat, perplexity, length) are those of the
    shortest recovery search, which the report plots; ``rope_params`` is what the model runs with.
    """
    recoveries = sorted(recoveries, key=lambda r: r["length"])
    long_params = long_record["rope_params"]
    sets = [{"max_length": r["length"], "factors": r["factors"], "n_hat": r["n_hat"]} for r in recoveries]
    sets.append({"max_length": None, "factors": list(long_params["factors"]), "n_hat": long_params["n_hat"]})
    params = {k: v for k, v in long_params.items() if k not in ("factors", "n_hat", "factor_sets")}
    return {**recoveries[0], "rope_params": {**params, "factor_sets": sets}, "recoveries": recoveries,
            "long": {"variant": long_variant, "factors": long_params["factors"], "n_hat": long_params["n_hat"],
                     "length": long_record["length"], "perplexity": long_record["perplexity"]}}
