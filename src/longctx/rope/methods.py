"""The RoPE scaling methods of PI, YaRN (with NTK-aware), Giraffe and LongRoPE, one function each.

Formulas: REFERENCE section 1 as summarised in docs; notation d = head dim, b = base,
L = original context, s = scale, theta_i = b^(-2i/d).
"""

from __future__ import annotations

import math

import torch

from longctx.rope.registry import (
    CustomRopeType,
    RopeGeometry,
    RopeMethod,
    RopeMethodError,
    register_custom_type,
    register_method,
)


def _theta32(rope_parameters: dict, head_dim: int) -> torch.Tensor:
    """theta_i in float32, computed as transformers computes it (so built-in and custom agree)."""
    base = rope_parameters["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


# --- none / extrapolation -------------------------------------------------------------------

register_method(
    RopeMethod(
        name="none",
        build=lambda s, p, g: {"rope_type": "default", "rope_theta": g.base},
        description="unchanged RoPE (extrapolation; with fine-tuning: PI's 'direct fine-tuning')",
    )
)

# --- PI: positions m -> m/s -------------------------------------------------------------------

register_method(
    RopeMethod(
        name="pi",
        build=lambda s, p, g: {"rope_type": "linear", "factor": s, "rope_theta": g.base},
        description="Position Interpolation (Chen et al. 2023): theta_i / s",
    )
)

# --- NTK-aware: base b' = b * s^(d/(d-2)) -------------------------------------------------------


def ntk_base(base: float, scale: float, head_dim: int) -> float:
    return base * scale ** (head_dim / (head_dim - 2))


register_method(
    RopeMethod(
        name="ntk",
        build=lambda s, p, g: {"rope_type": "default", "rope_theta": ntk_base(g.base, s, g.head_dim)},
        description="NTK-aware base change b * s^(d/(d-2)) (YaRN paper eq. 16)",
    )
)

# --- YaRN ---------------------------------------------------------------------------------------


def yarn_mscale(scale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0


def yarn_paper_inv_freq(rope_parameters: dict, head_dim: int, seq_len=None):
    """Paper form: gamma ramps linearly in r_i = L * theta_i / (2 pi) between alpha and beta."""
    theta = _theta32(rope_parameters, head_dim)
    s = float(rope_parameters["factor"])
    L = rope_parameters["original_max_position_embeddings"]
    alpha, beta = rope_parameters["alpha"], rope_parameters["beta"]
    r = L * theta / (2 * math.pi)
    gamma = ((r - alpha) / (beta - alpha)).clamp(0.0, 1.0)
    inv_freq = (1 - gamma) * theta / s + gamma * theta
    scale = rope_parameters.get("attention_factor") or yarn_mscale(s)
    return inv_freq, scale


register_custom_type(CustomRopeType(name="longctx_yarn", inv_freq=yarn_paper_inv_freq))


def _build_yarn(s: float, p: dict, g: RopeGeometry) -> dict:
    if p["ramp"] == "code":
        # the released code (and transformers' built-in): ramp linear in the dimension index
        out = {
            "rope_type": "yarn",
            "factor": s,
            "original_max_position_embeddings": g.original_context,
            "beta_fast": float(p["beta"]),
            "beta_slow": float(p["alpha"]),
            "truncate": True,
        }
    else:
        out = {
            "rope_type": "longctx_yarn",
            "factor": s,
            "original_max_position_embeddings": g.original_context,
            "alpha": float(p["alpha"]),
            "beta": float(p["beta"]),
        }
    if p["attention_factor"] is not None:
        out["attention_factor"] = float(p["attention_factor"])
    out["rope_theta"] = g.base
    return out


def _validate_yarn(s: float, p: dict, g: RopeGeometry) -> None:
    if p["ramp"] not in ("paper", "code"):
        raise RopeMethodError(f"yarn: ramp must be 'paper' or 'code', got {p['ramp']!r}")
    if not p["beta"] > p["alpha"]:
        raise RopeMethodError(f"yarn: beta ({p['beta']}) must be greater than alpha ({p['alpha']})")


register_method(
    RopeMethod(
        name="yarn",
        build=_build_yarn,
        validate=_validate_yarn,
        defaults={"alpha": 1.0, "beta": 32.0, "ramp": "paper", "attention_factor": None},
        description="YaRN (Peng et al. 2023): NTK-by-parts ramp + attention temperature",
    )
)

# --- LongRoPE -----------------------------------------------------------------------------------


def longrope_mscale(scale: float, original_context: int) -> float:
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(original_context))


def _factor_set_for(rope_parameters: dict, seq_len: int) -> dict:
    for fs in rope_parameters["factor_sets"]:
        if fs["max_length"] is None or seq_len <= fs["max_length"]:
            return fs
    return rope_parameters["factor_sets"][-1]


def longrope_inv_freq(rope_parameters: dict, head_dim: int, seq_len=None):
    fs = _factor_set_for(rope_parameters, seq_len or 1)
    factors = torch.tensor(fs["factors"], dtype=torch.float32)
    return 1.0 / (factors * (1.0 / _theta32(rope_parameters, head_dim))), rope_parameters["attention_factor"]


def longrope_angles(rope_parameters: dict, head_dim: int, position_ids: torch.Tensor):
    """theta_i / lambda_i, except the first n_hat positions, which keep the original theta_i."""
    seq_len = int(position_ids.max()) + 1
    fs = _factor_set_for(rope_parameters, seq_len)
    device = position_ids.device
    factors = torch.tensor(fs["factors"], dtype=torch.float32, device=device)
    theta = _theta32(rope_parameters, head_dim).to(device)
    pos = position_ids[..., None].float()
    scaled = pos * (1.0 / (factors * (1.0 / theta)))
    if fs["n_hat"] > 0:
        scaled = torch.where(pos < fs["n_hat"], pos * theta, scaled)
    return scaled, rope_parameters["attention_factor"]


register_custom_type(
    CustomRopeType(
        name="longctx_longrope",
        inv_freq=longrope_inv_freq,
        angles=longrope_angles,
        switch_lengths=lambda p: [fs["max_length"] for fs in p["factor_sets"] if fs["max_length"] is not None],
    )
)


def _factor_sets(s: float, p: dict, g: RopeGeometry) -> list[dict]:
    """Normalise the factor parameters into sets sorted by the longest length each serves."""
    if p["factor_sets"]:
        sets = [dict(fs) for fs in p["factor_sets"]]
    else:
        factors = p["factors"] if p["factors"] is not None else [s] * g.n_pairs
        sets = [{"max_length": None, "factors": factors, "n_hat": p["n_hat"]}]
        if p["short_factors"] is not None:
            short_until = p["short_max_length"] or g.original_context
            sets.insert(0, {"max_length": short_until, "factors": p["short_factors"], "n_hat": p["short_n_hat"]})
    for fs in sets:
        fs.setdefault("n_hat", 0)
        fs.setdefault("max_length", None)
        fs["factors"] = [float(x) for x in fs["factors"]]
    sets.sort(key=lambda fs: math.inf if fs["max_length"] is None else fs["max_length"])
    return sets


def _validate_longrope(s: float, p: dict, g: RopeGeometry) -> None:
    sets = _factor_sets(s, p, g)
    if sum(fs["max_length"] is None for fs in sets) != 1:
        raise RopeMethodError("longrope: exactly one factor set must have max_length null (the longest)")
    for k, fs in enumerate(sets):
        where = f"longrope factor set {k} (max_length {fs['max_length']})"
        if len(fs["factors"]) != g.n_pairs:
            raise RopeMethodError(
                f"{where}: {len(fs['factors'])} factors, but head dimension {g.head_dim} needs {g.n_pairs}"
            )
        bad = [x for x in fs["factors"] if not (math.isfinite(x) and x >= 1.0)]
        if bad:
            raise RopeMethodError(f"{where}: every factor must be >= 1 (got {bad[:3]})")
        if p["monotone"] and any(b < a for a, b in zip(fs["factors"], fs["factors"][1:])):
            raise RopeMethodError(f"{where}: factors must be non-decreasing in the dimension index")
        if not (isinstance(fs["n_hat"], int) and fs["n_hat"] >= 0):
            raise RopeMethodError(f"{where}: n_hat must be an integer >= 0, got {fs['n_hat']!r}")


def _build_longrope(s: float, p: dict, g: RopeGeometry) -> dict:
    sets = _factor_sets(s, p, g)
    mscale = p["mscale"] if p["mscale"] is not None else longrope_mscale(s, g.original_context)
    common = {"original_max_position_embeddings": g.original_context, "rope_theta": g.base}
    builtin_ok = all(fs["n_hat"] == 0 for fs in sets) and (
        len(sets) == 1 or (len(sets) == 2 and sets[0]["max_length"] == g.original_context)
    )
    if builtin_ok:
        # transformers' `longrope` (Phi-3 style): short set up to L, long set beyond, no n_hat
        return {
            "rope_type": "longrope",
            "short_factor": sets[0]["factors"],
            "long_factor": sets[-1]["factors"],
            "factor": s,
            "attention_factor": float(mscale),
            **common,
        }
    return {"rope_type": "longctx_longrope", "factor": s, "attention_factor": float(mscale),
            "factor_sets": sets, **common}


register_method(
    RopeMethod(
        name="longrope",
        build=_build_longrope,
        validate=_validate_longrope,
        defaults={
            "factors": None,  # per-pair lambda_i (d/2 values); null = all equal to s (= PI)
            "n_hat": 0,  # first n_hat positions keep the original RoPE
            "short_factors": None,  # optional second set used up to short_max_length
            "short_max_length": None,  # default: the original context
            "short_n_hat": 0,
            "factor_sets": None,  # general form: [{max_length, factors, n_hat}], one with max_length null
            "mscale": None,  # cos/sin scale; null = sqrt(1 + ln s / ln L)
            "monotone": True,  # require non-decreasing factors (the paper's constraint)
        },
        description="LongRoPE (Ding et al. 2024): searched per-dimension factors, n_hat, mscale",
    )
)
