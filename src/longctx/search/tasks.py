"""What one search looks for: its length, space and seeds, and how a candidate becomes LongRoPE
parameters - plain, secondary (multiplying the factors a model was fine-tuned with) or a
short-context recovery set (LongRoPE section 3.3, progressive extension) - and the final record of
a chain's model, which carries every factor set."""

from __future__ import annotations

from dataclasses import dataclass, field

from longctx.rope import RopeGeometry
from longctx.search.critical import CriticalSpace, critical_space
from longctx.search.space import SearchError, SearchSpace, seed_factors, space_for


@dataclass
class SearchTask:
    """One search: where it scores candidates and how a candidate becomes LongRoPE parameters.

    ``scale`` is the LongRoPE scale the model runs at (it sets mscale, the cos/sin scale), which for
    a short-context recovery set is the final model's scale, not ``length / L``.

    - plain: the candidate's factors are the model's factors;
    - secondary (``base_factors`` set): the model was fine-tuned with ``base_factors``, and the
      candidate ``lambda'`` multiplies them element-wise (``lambda_ft * lambda'``);
    - recovery (``long_set`` set): the candidate is the factor set for sequences of at most
      ``length`` tokens, the long set serves longer ones.
    """

    kind: str  # "search", "secondary" or "recovery"
    length: int
    scale: float
    space: SearchSpace
    seeds: dict[str, list[float]]
    params: dict = field(default_factory=dict)  # other longrope parameters (mscale, monotone, ...)
    base_factors: list[float] | None = None
    long_set: dict | None = None  # {"factors": [...], "n_hat": k}
    length_scale: float | None = None  # length / L when it differs from ``scale`` (recovery)

    def factors_used(self, factors: list[float]) -> list[float]:
        if self.base_factors is None:
            return list(factors)
        return [round(a * b, 10) for a, b in zip(self.base_factors, factors)]

    def rope_params(self, n_hat: int, factors: list[float]) -> dict:
        used = self.factors_used(factors)
        if self.long_set is not None:
            return {**self.params, "factors": None, "n_hat": 0, "factor_sets": [
                {"max_length": self.length, "factors": used, "n_hat": n_hat},
                {"max_length": None, "factors": list(self.long_set["factors"]), "n_hat": self.long_set["n_hat"]},
            ]}
        return {**self.params, "factors": used, "n_hat": n_hat}

    def record(self, result: dict) -> dict:
        """What ``factors.json`` holds: the search (history, best, perplexity) and the RoPE it gives."""
        out = {"method": "longrope", "kind": self.kind, "scale": self.length_scale or self.scale,
               "rope_scale": self.scale, "length": self.length,
               "lambda_max": self.space.lambda_max, "seeds": self.seeds, **result,
               "factors": self.factors_used(result["factors"]),
               "rope_params": self.rope_params(result["n_hat"], result["factors"])}
        if self.base_factors is not None:
            out["relative_factors"] = result["factors"]
            out["base_factors"] = list(self.base_factors)
        if isinstance(self.space, CriticalSpace):
            out["critical_dim"] = {"found": result["critical_dim"], **self.space.record()}
        return out


def _critical(settings: dict) -> bool:
    return bool((settings.get("critical_dim") or {}).get("enabled"))


def _no_critical(settings: dict, kind: str) -> None:
    if _critical(settings):
        raise SearchError(f"config key 'search.critical_dim.enabled': LongRoPE2's critical-dimension search is a "
                          f"single search on weights never fine-tuned with LongRoPE factors, not a chain's {kind} "
                          f"search (give that chain one step and no recovery, or turn it off there)")


def plain_task(geometry: RopeGeometry, scale: float, settings: dict, params: dict | None = None) -> SearchTask:
    """Search at ``scale x L`` on a model that was never fine-tuned with LongRoPE factors; LongRoPE2's
    critical-dimension space when ``settings['critical_dim']['enabled']``."""
    space = critical_space(geometry, scale, settings) if _critical(settings) else space_for(geometry, scale, settings)
    return SearchTask("search", geometry.length_at(scale), float(scale), space, seed_factors(geometry, scale),
                      dict(params or {}))


def secondary_task(geometry: RopeGeometry, scale: float, finetuned_scale: float, base_factors: list[float],
                   settings: dict, params: dict | None = None) -> SearchTask:
    """Search ``lambda'`` at ``scale x L`` on a model fine-tuned at ``finetuned_scale`` with ``base_factors``.

    The space and the PI / NTK / YaRN seeds are those of the relative extension ``scale /
    finetuned_scale`` of a model whose context is the fine-tuned length.
    """
    _no_critical(settings, "secondary")
    if len(base_factors) != geometry.n_pairs:
        raise SearchError(f"secondary search: {len(base_factors)} base factors, the model needs {geometry.n_pairs}")
    relative = scale / finetuned_scale
    if relative <= 1:
        raise SearchError(f"secondary search: scale {scale} must be above the fine-tuned scale {finetuned_scale}")
    tuned = RopeGeometry(geometry.head_dim, geometry.base, geometry.length_at(finetuned_scale),
                         model_type=geometry.model_type)  # the YaRN seed's betas are the model family's
    return SearchTask("secondary", geometry.length_at(scale), float(scale),
                      space_for(geometry, relative, settings), seed_factors(tuned, relative), dict(params or {}),
                      base_factors=[float(x) for x in base_factors])


def recovery_task(geometry: RopeGeometry, length: int, final_scale: float, long_set: dict, settings: dict,
                  params: dict | None = None, lambda_max: float | None = None) -> SearchTask:
    """Search the factor set for sequences of at most ``length`` tokens of the final model.

    The model runs at ``final_scale`` (its mscale), the long set serves longer sequences. The
    space's bound is that of the recovery length (``lambda_max_ratio x length / L``), lower than
    the long search's, unless ``lambda_max`` says otherwise. Seeds: PI, NTK and YaRN at the
    recovery length (all 1 at L: the original RoPE) and the long factors clipped to the bound.
    """
    _no_critical(settings, "recovery")
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
