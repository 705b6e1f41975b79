"""The RoPE scaling methods of PI, NTK-aware, YaRN, Giraffe, LongRoPE and xPos, one function each.

Notation (as in the papers): d = head dim, b = base, L = original context, s = scale,
theta_i = b^(-2i/d), i = 0 .. d/2-1. Frequencies are computed in float32 the way transformers
computes its own types, so a custom type and the built-in it generalises agree bit for bit
where the formulas coincide, and scale 1 reproduces unchanged RoPE exactly. Exceptions, where
float32 would cost more than 1e-6 relative: YaRN's ramps blend in float64 and round once, and the
Giraffe power basis uses (n - i)/n for 1 - i/n.

Which form each method takes in a saved config:
  none, ntk -> `default`; pi, giraffe_randomized -> `linear`; yarn ramp code -> `yarn`;
  longrope without n_hat and with at most a short/long pair switching at L -> `longrope`;
  dynamic_ntk -> `dynamic` (factor 1) when max_position_embeddings is L;
  everything else -> a `longctx_*` type registered by ``import longctx``.

Why one module: the methods share their notation, float32 conventions and helpers (theta, the NTK
base, mscale), and reading them side by side is how one checks they agree where the papers say
they coincide - as transformers keeps every rope type in one ``modeling_rope_utils``. Each method
is one section: its frequency function, its validation and its registry entry; a new method is a
new section and a test in tests/test_rope_formulas.py.
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
    resolve_params,
)


def _theta32(base: float, head_dim: int) -> torch.Tensor:
    """theta_i in float32, computed as transformers computes it (so built-in and custom agree)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _number(value, what: str, minimum: float, strict: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise RopeMethodError(f"{what} must be a number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def dynamic_scale(seq_len: int | None, original_context: int) -> float:
    """s = max(1, len / L): the dynamic methods' scale for a sequence of ``seq_len`` tokens."""
    return max(1.0, (seq_len or 0) / original_context)


def _dynamic_stale(rope_parameters: dict, cached_len: int, new_len: int) -> bool:
    # the rotation of every position depends on the length once it exceeds L
    return new_len != cached_len and max(cached_len, new_len) > rope_parameters["original_max_position_embeddings"]


# --- none / extrapolation -------------------------------------------------------------------

register_method(
    RopeMethod(
        name="none",
        build=lambda s, p, g: {"rope_type": "default", "rope_theta": g.base},
        description="unchanged RoPE (extrapolation; with fine-tuning: PI's 'direct fine-tuning')",
    )
)

# --- PI: positions m -> m/s -------------------------------------------------------------------


def _pi(s: float, g: RopeGeometry) -> dict:
    if s == 1:
        return {"rope_type": "default", "rope_theta": g.base}
    return {"rope_type": "linear", "factor": s, "rope_theta": g.base}


register_method(
    RopeMethod(
        name="pi",
        build=lambda s, p, g: _pi(s, g),
        description="Position Interpolation (Chen et al. 2023): theta_i / s",
    )
)

# --- NTK-aware: base b' = b * s^(d/(d-2)) -------------------------------------------------------


def ntk_base(base: float, scale: float, head_dim: int) -> float:
    # same float operations as transformers' `dynamic` type, so dynamic NTK matches it exactly
    return base * scale ** (head_dim / (head_dim - 2))


def _validate_ntk(s: float, p: dict, g: RopeGeometry) -> None:
    if g.head_dim <= 2:
        raise RopeMethodError(f"NTK-aware scaling needs a head dimension above 2 (d/(d-2)), got {g.head_dim}")


register_method(
    RopeMethod(
        name="ntk",
        build=lambda s, p, g: {"rope_type": "default", "rope_theta": ntk_base(g.base, s, g.head_dim)},
        validate=_validate_ntk,
        description="NTK-aware base change b * s^(d/(d-2)) (YaRN paper eq. 16)",
    )
)

# --- dynamic NTK: NTK with s = max(1, len/L) recomputed for every forward -------------------------


def dynamic_ntk_inv_freq(rope_parameters: dict, head_dim: int, seq_len=None):
    s = dynamic_scale(seq_len, rope_parameters["original_max_position_embeddings"])
    return _theta32(ntk_base(rope_parameters["rope_theta"], s, head_dim), head_dim), 1.0


register_custom_type(
    CustomRopeType(name="longctx_dynamic_ntk", inv_freq=dynamic_ntk_inv_freq, cache_stale=_dynamic_stale)
)


def _build_dynamic_ntk(s: float, p: dict, g: RopeGeometry) -> dict:
    if g.max_position_embeddings in (None, g.original_context):
        # transformers' `dynamic` with factor 1 is b * (len/L)^(d/(d-2)) beyond L, with L read from
        # max_position_embeddings. Its module caches frequencies between forwards (a shorter
        # sequence after a longer one reuses the longer's); hf_patch recomputes them per forward.
        return {"rope_type": "dynamic", "factor": 1.0, "rope_theta": g.base}
    return {"rope_type": "longctx_dynamic_ntk", "original_max_position_embeddings": g.original_context,
            "rope_theta": g.base}


register_method(
    RopeMethod(
        name="dynamic_ntk",
        build=_build_dynamic_ntk,
        validate=_validate_ntk,
        description="dynamic NTK: NTK-aware with s = max(1, len/L) per forward; the variant's scale only sets the target length",
    )
)

# --- YaRN ---------------------------------------------------------------------------------------


def yarn_mscale(scale: float, coefficient: float) -> float:
    """sqrt(1/t) = c ln s + 1 (the paper: c = 0.1): the factor on cos and sin (so logits scale by its square)."""
    return 1.0 if scale <= 1 else coefficient * math.log(scale) + 1.0


def yarn_paper_inv_freq(base: float, head_dim: int, s: float, L: int, alpha: float, beta: float) -> torch.Tensor:
    """Paper form: gamma ramps linearly in r_i = L * theta_i / (2 pi) between alpha and beta."""
    if s == 1:
        return _theta32(base, head_dim)
    # in float64, rounded once: the ramp amplifies an error in theta_i by up to 1 + s / (beta - alpha)
    theta = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    r = L * theta / (2 * math.pi)
    gamma = ((r - alpha) / (beta - alpha)).clamp(0.0, 1.0)
    return ((1 - gamma) * theta / s + gamma * theta).float()


def yarn_code_inv_freq(base: float, head_dim: int, s: float, L: int, alpha: float, beta: float) -> torch.Tensor:
    """Released-code form (transformers' `yarn`, truncate=True): ramp linear in the pair index
    between the (floored / ceiled) pairs where the number of rotations in L is beta and alpha."""
    if s == 1:
        return _theta32(base, head_dim)

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta)), 0)
    high = min(math.ceil(correction_dim(alpha)), head_dim - 1)
    if low == high:
        high += 0.001  # as the code: avoid a zero-width ramp
    pos_freqs = (base ** (torch.arange(0, head_dim, 2).float() / head_dim)).double()
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (s * pos_freqs)
    keep = 1 - ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return (interpolation * (1 - keep) + extrapolation * keep).float()


YARN_RAMPS = {"paper": yarn_paper_inv_freq, "code": yarn_code_inv_freq}


def _yarn_custom_inv_freq(rope_parameters: dict, head_dim: int, seq_len=None):
    p = rope_parameters
    L = p["original_max_position_embeddings"]
    s = dynamic_scale(seq_len, L) if p.get("dynamic") else float(p["factor"])
    inv_freq = YARN_RAMPS[p["ramp"]](p["rope_theta"], head_dim, s, L, p["alpha"], p["beta"])
    # checkpoints saved before the coefficient was a parameter used the paper's 0.1
    return inv_freq, p.get("attention_factor") or yarn_mscale(s, p.get("mscale_coefficient", 0.1))


# static YaRN with the paper's ramp; dynamic YaRN (either ramp) recomputes s = max(1, len/L)
register_custom_type(CustomRopeType(name="longctx_yarn", inv_freq=_yarn_custom_inv_freq))
register_custom_type(
    CustomRopeType(name="longctx_dynamic_yarn", inv_freq=_yarn_custom_inv_freq, cache_stale=_dynamic_stale)
)


def _build_yarn(s: float, p: dict, g: RopeGeometry, dynamic: bool = False) -> dict:
    if p["ramp"] == "code" and not dynamic:
        if s == 1:
            return {"rope_type": "default", "rope_theta": g.base}
        # the released code (and transformers' built-in): ramp linear in the dimension index
        out = {
            "rope_type": "yarn",
            "factor": s,
            "original_max_position_embeddings": g.original_context,
            "beta_fast": float(p["beta"]),
            "beta_slow": float(p["alpha"]),
            "truncate": True,
        }
        if p["attention_factor"] is None:  # transformers' own default is the paper's 0.1 ln s + 1
            out["attention_factor"] = yarn_mscale(s, float(p["mscale_coefficient"]))
    else:
        out = {
            "rope_type": "longctx_dynamic_yarn" if dynamic else "longctx_yarn",
            "original_max_position_embeddings": g.original_context,
            "alpha": float(p["alpha"]),
            "beta": float(p["beta"]),
            "ramp": p["ramp"],
            "mscale_coefficient": float(p["mscale_coefficient"]),
        }
        if dynamic:
            out["dynamic"] = True
        else:
            out["factor"] = s
    if p["attention_factor"] is not None:
        out["attention_factor"] = float(p["attention_factor"])
    out["rope_theta"] = g.base
    return out


def _validate_yarn(s: float, p: dict, g: RopeGeometry) -> None:
    if p["ramp"] not in YARN_RAMPS:
        raise RopeMethodError(f"yarn: ramp must be 'paper' or 'code', got {p['ramp']!r}")
    alpha = _number(p["alpha"], "yarn: alpha", 0.0, strict=True)
    beta = _number(p["beta"], "yarn: beta", 0.0, strict=True)
    if not beta > alpha:
        raise RopeMethodError(f"yarn: beta ({beta}) must be greater than alpha ({alpha})")
    if p["attention_factor"] is not None:
        _number(p["attention_factor"], "yarn: attention_factor", 0.0, strict=True)
    _number(p["mscale_coefficient"], "yarn: mscale_coefficient", 0.0)


# ramp: the released code's (jquesnelle/yarn, as every released YaRN model, transformers' `yarn` and
# LongRoPE's YaRN baseline); `paper` is the paper's ramp in r_i. alpha/beta null: per model family
# (YARN_FAMILY_BETAS)
# (alpha, beta, mscale_coefficient) null: per model family (YARN_FAMILY_DEFAULTS); attention_factor
# null: mscale_coefficient * ln s + 1
YARN_DEFAULTS = {"alpha": None, "beta": None, "ramp": "code", "attention_factor": None, "mscale_coefficient": None}
# alpha = beta_slow, beta = beta_fast, cos/sin scale c ln s + 1. Llama: 1 / 32 / 0.1 (the YaRN
# paper's values for the LLaMA family). Mistral: 2 / 128 / 0.07 (jquesnelle/yarn
# scaled_rope/modeling_mistral_yarn.py, the code of the Yarn-Mistral models, and LongRoPE's Mistral
# YaRN baseline, microsoft/LongRoPE rope/MistralYaRNScaledRotaryEmbedding.py)
YARN_FAMILY_DEFAULTS = {"mistral": {"alpha": 2.0, "beta": 128.0, "mscale_coefficient": 0.07}}
YARN_LLAMA_DEFAULTS = {"alpha": 1.0, "beta": 32.0, "mscale_coefficient": 0.1}


def yarn_family_defaults(g: RopeGeometry) -> dict:
    """YaRN's alpha, beta and mscale coefficient for the model family of ``g`` (Llama's for any other)."""
    return dict(YARN_FAMILY_DEFAULTS.get(g.model_type, YARN_LLAMA_DEFAULTS))


register_method(
    RopeMethod(
        name="yarn",
        build=_build_yarn,
        validate=_validate_yarn,
        defaults=dict(YARN_DEFAULTS),
        geometry_defaults=yarn_family_defaults,
        description="YaRN (Peng et al. 2023): NTK-by-parts ramp + attention temperature (ramp: paper | code)",
    )
)

register_method(
    RopeMethod(
        name="dynamic_yarn",
        build=lambda s, p, g: _build_yarn(s, p, g, dynamic=True),
        validate=_validate_yarn,
        defaults=dict(YARN_DEFAULTS),
        geometry_defaults=yarn_family_defaults,
        description="dynamic YaRN: YaRN with s = max(1, len/L) per forward (and its mscale); scale only sets the target length",
    )
)

# --- Giraffe: power basis and truncated basis ---------------------------------------------------


def giraffe_inv_freq(rope_parameters: dict, head_dim: int, seq_len=None):
    """As abacusai/Long-Context ``ScaledLlamaRotaryEmbedding``: divide by ``factor`` (the linear
    scale; 1 for the power basis alone), then the power basis theta_i * (1 - 2i/d)^p, then
    truncation at beta = 2 pi / T (keep >= beta; [beta/a, beta) -> beta/rho; below beta/a -> 0)."""
    p = rope_parameters
    freq = _theta32(p["rope_theta"], head_dim)
    if p["factor"] > 1:
        freq = freq / p["factor"]
    if p.get("power"):
        n = head_dim // 2
        # (n - i) / n rather than the code's 1 - i / n: the same number without the cancellation
        # that costs the slowest pairs ~1e-6 of relative precision in float32
        freq = freq * ((n - torch.arange(n, dtype=torch.float32)) / n) ** p["power"]
    if p.get("cutoff_length"):
        beta = 2 * math.pi / p["cutoff_length"]
        truncated = torch.where(freq < beta, torch.tensor(beta / p["rho_divisor"]), freq)
        freq = torch.where(freq < beta / p["a_divisor"], torch.tensor(0.0), truncated)
    return freq, 1.0


register_custom_type(CustomRopeType(name="longctx_giraffe", inv_freq=giraffe_inv_freq))


def _build_giraffe(s: float, p: dict, g: RopeGeometry) -> dict:
    # Giraffe's training script takes --scale-power or --scale-context, not both: its power runs
    # divide by no linear scale (s then only sets the target length, as for xpos). Truncation
    # goes with --scale-context (abacusai/Long-Context python/train/finetune_context.py).
    linear = p.get("linear_scale", True)
    out = {"rope_type": "longctx_giraffe", "factor": s if linear else 1.0, "power": float(p.get("power", 0.0))}
    if "cutoff_length" in p:
        out.update(cutoff_length=float(p["cutoff_length"] or g.original_context),
                   a_divisor=float(p["a_divisor"]), rho_divisor=float(p["rho_divisor"]))
    out["rope_theta"] = g.base
    return out


def _validate_giraffe(s: float, p: dict, g: RopeGeometry) -> None:
    if "power" in p:
        _number(p["power"], "giraffe_power: power (p)", 0.0)
    if not isinstance(p.get("linear_scale", True), bool):
        raise RopeMethodError(f"giraffe_power: linear_scale must be true or false, got {p['linear_scale']!r}")
    if "cutoff_length" in p:
        if p["cutoff_length"] is not None:
            _number(p["cutoff_length"], "giraffe_truncated: cutoff_length (T)", 0.0, strict=True)
        a = _number(p["a_divisor"], "giraffe_truncated: a_divisor", 1.0, strict=True)
        rho = _number(p["rho_divisor"], "giraffe_truncated: rho_divisor", 1.0, strict=True)
        if rho < a:
            raise RopeMethodError(
                f"giraffe_truncated: rho_divisor ({rho}) must be >= a_divisor ({a}), so that rho = beta/rho_divisor "
                f"is at most the lowest kept band a = beta/a_divisor"
            )


register_method(
    RopeMethod(
        name="giraffe_power",
        build=_build_giraffe,
        validate=_validate_giraffe,
        defaults={"power": 0.5, "linear_scale": False},
        description="Giraffe power basis (Pal et al. 2023): theta_i * (1 - 2i/d)^p, the scale only setting the "
                    "target length; linear_scale: true divides by s as well (theta_i / s * (1 - 2i/d)^p)",
    )
)

register_method(
    RopeMethod(
        name="giraffe_truncated",
        build=_build_giraffe,
        validate=_validate_giraffe,
        defaults={"cutoff_length": None, "a_divisor": 8.0, "rho_divisor": 16.0},
        description="Giraffe truncated basis: theta_i / s, then with beta = 2 pi / T (T = cutoff_length, "
                    "null = L): keep theta >= beta, [beta/8, beta) -> beta/16, below beta/8 -> 0",
    )
)

# --- Giraffe: randomized positions (training only) ----------------------------------------------


def giraffe_random_positions(batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                             device=None) -> torch.Tensor:
    """Position ids [B, T] (float32): cumulative sums of U[0, 2) steps, scaled down to end at T
    when they overshoot it (abacusai/Long-Context ``random_init_forward``). One draw per call."""
    steps = torch.rand((batch_size, seq_len), generator=generator, dtype=torch.float32) * 2
    positions = steps.cumsum(-1)
    positions = positions * (seq_len / positions[:, -1:].clamp(min=float(seq_len)))
    return positions.to(device) if device is not None else positions


register_method(
    RopeMethod(
        name="giraffe_randomized",
        build=lambda s, p, g: _pi(s, g),
        training_positions=giraffe_random_positions,
        description="Giraffe randomized positions: PI at scale s, trained on random increasing positions "
                    "(longctx.rope.training_inputs); inference positions unchanged",
    )
)

# --- xPos: rotary plus a per-pair exponential decay of the attention logits ----------------------


def xpos_zeta(head_dim: int) -> torch.Tensor:
    """zeta_i = (2i + 0.4 d) / (1.4 d), one per pair (Sun et al. 2022; float64)."""
    return (torch.arange(0, head_dim, 2, dtype=torch.float64) + 0.4 * head_dim) / (1.4 * head_dim)


# float32 holds e^+-87; the largest per-side exponent is span / 2 / gamma * |ln zeta_0| (zeta_0 = 2/7)
_XPOS_MAX_EXPONENT = 80.0


def xpos_attention_scales(rope_parameters: dict, head_dim: int, q_pos: torch.Tensor, k_pos: torch.Tensor):
    """Queries times zeta^((n - c)/gamma), keys times zeta^(-(m - c)/gamma): the logit of (n, m)
    gets sum_i q_i k_i zeta_i^((n - m)/gamma) whatever c is; c is the middle of the keys' span, so
    the factors stay within float32 (Giraffe's code centres the same way)."""
    gamma = float(rope_parameters["scale_base"])
    q_pos, k_pos = q_pos.double(), k_pos.double()
    centre = (k_pos[:, :1] + k_pos[:, -1:]) / 2
    q_exp, k_exp = (q_pos - centre) / gamma, (k_pos - centre) / gamma
    log_zeta = torch.log(xpos_zeta(head_dim)).to(q_pos.device)
    widest = float(torch.cat([q_exp.abs().flatten(), k_exp.abs().flatten()]).max()) * float(-log_zeta[0])
    if widest > _XPOS_MAX_EXPONENT:
        raise RopeMethodError(
            f"xpos: positions spanning {float(k_pos.max() - k_pos.min()) + 1:.0f} tokens with scale_base {gamma:g} "
            f"need decay factors beyond float32 range; use a scale_base of at least "
            f"{gamma * widest / _XPOS_MAX_EXPONENT:.0f}"
        )
    log_zeta = torch.cat([log_zeta, log_zeta])  # rotate_half layout: pair i is dims i and i + d/2
    q_scale = torch.exp(q_exp[..., None] * log_zeta)[:, None].float()
    k_scale = torch.exp(-k_exp[..., None] * log_zeta)[:, None].float()
    return q_scale, k_scale


register_custom_type(
    CustomRopeType(name="longctx_xpos", inv_freq=lambda p, d, n=None: (_theta32(p["rope_theta"], d), 1.0),
                   attention_scales=xpos_attention_scales)
)


def _validate_xpos(s: float, p: dict, g: RopeGeometry) -> None:
    _number(p["scale_base"], "xpos: scale_base (gamma)", 0.0, strict=True)


register_method(
    RopeMethod(
        name="xpos",
        build=lambda s, p, g: {"rope_type": "longctx_xpos", "scale_base": float(p["scale_base"]), "rope_theta": g.base},
        validate=_validate_xpos,
        defaults={"scale_base": 512.0},
        description="xPos (Sun et al. 2022): unchanged rotary, logits of (n, m) decayed per pair by "
                    "zeta_i^((n-m)/gamma); needs SDPA attention; scale only sets the target length",
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


def _longrope_freqs(rope_parameters: dict, factors: list[float], head_dim: int, device=None) -> torch.Tensor:
    # the same float operations as transformers' `longrope`
    ext = torch.tensor(factors, dtype=torch.float32, device=device)
    shape = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (ext * rope_parameters["rope_theta"] ** shape)


def _set_mscale(rope_parameters: dict, fs: dict) -> float:
    # a factor set may carry its own cos/sin scale (LongRoPE2: the original RoPE, 1, for short sequences)
    return fs["mscale"] if fs.get("mscale") is not None else rope_parameters["attention_factor"]


def longrope_inv_freq(rope_parameters: dict, head_dim: int, seq_len=None):
    fs = _factor_set_for(rope_parameters, seq_len or 1)
    return _longrope_freqs(rope_parameters, fs["factors"], head_dim), _set_mscale(rope_parameters, fs)


def longrope_angles(rope_parameters: dict, head_dim: int, position_ids: torch.Tensor):
    """theta_i / lambda_i times mscale, except the first n_hat positions, which keep the original RoPE:
    theta_i and cos/sin unscaled (microsoft/LongRoPE
    rope/LlamaLongRoPEScaledStartTokenRotaryEmbedding.py copies the original cos/sin there). The
    scale is then one per position, [..., T, 1]."""
    seq_len = int(position_ids.max()) + 1
    fs = _factor_set_for(rope_parameters, seq_len)
    device = position_ids.device
    pos = position_ids[..., None].float()
    scaled = pos * _longrope_freqs(rope_parameters, fs["factors"], head_dim, device)
    mscale = _set_mscale(rope_parameters, fs)
    if fs["n_hat"] > 0:
        start = pos < fs["n_hat"]
        scaled = torch.where(start, pos * _theta32(rope_parameters["rope_theta"], head_dim).to(device), scaled)
        mscale = torch.where(start, torch.ones((), device=device), torch.full((), float(mscale), device=device))
    return scaled, mscale


def _longrope_stale(rope_parameters: dict, cached_len: int, new_len: int) -> bool:
    a, b = sorted((cached_len, new_len))
    return any(a <= fs["max_length"] < b for fs in rope_parameters["factor_sets"] if fs["max_length"] is not None)


register_custom_type(
    CustomRopeType(name="longctx_longrope", inv_freq=longrope_inv_freq, angles=longrope_angles,
                   cache_stale=_longrope_stale,
                   switch_lengths=lambda p: [fs["max_length"] for fs in p["factor_sets"] if fs["max_length"] is not None])
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
    for k, fs in enumerate(sets):
        unknown = set(fs) - {"max_length", "factors", "n_hat", "mscale"}
        if unknown or "factors" not in fs:
            raise RopeMethodError(f"longrope factor set {k}: needs 'factors' (and optionally 'max_length', 'n_hat', "
                                  f"'mscale'); unknown keys {sorted(unknown)}")
        fs.setdefault("n_hat", 0)
        fs.setdefault("max_length", None)
        if fs.get("mscale") is None:
            fs.pop("mscale", None)
        if not isinstance(fs["factors"], (list, tuple)):
            raise RopeMethodError(f"longrope factor set {k}: 'factors' must be a list, got {type(fs['factors']).__name__}")
        fs["factors"] = [float(x) for x in fs["factors"]]
    sets.sort(key=lambda fs: math.inf if fs["max_length"] is None else fs["max_length"])
    return sets


def _validate_longrope(s: float, p: dict, g: RopeGeometry) -> None:
    sets = _factor_sets(s, p, g)
    if sum(fs["max_length"] is None for fs in sets) != 1:
        raise RopeMethodError("longrope: exactly one factor set must have max_length null (the longest)")
    limits = [fs["max_length"] for fs in sets if fs["max_length"] is not None]
    if any(not (isinstance(x, int) and x >= 1) for x in limits) or len(set(limits)) != len(limits):
        raise RopeMethodError(f"longrope: factor-set max_length values must be distinct positive integers, got {limits}")
    for k, fs in enumerate(sets):
        where = f"longrope factor set {k} (max_length {fs['max_length']})"
        if len(fs["factors"]) != g.n_pairs:
            raise RopeMethodError(
                f"{where}: {len(fs['factors'])} factors, but head dimension {g.head_dim} needs {g.n_pairs} (d/2)"
            )
        bad = [x for x in fs["factors"] if not (math.isfinite(x) and x >= 1.0)]
        if bad:
            raise RopeMethodError(f"{where}: every factor must be >= 1 (got {bad[:3]})")
        if p["monotone"]:
            drops = [i for i in range(1, len(fs["factors"])) if fs["factors"][i] < fs["factors"][i - 1]]
            if drops:
                i = drops[0]
                raise RopeMethodError(
                    f"{where}: factors must be non-decreasing in the dimension index (lambda_{i} = "
                    f"{fs['factors'][i]} < lambda_{i - 1} = {fs['factors'][i - 1]}); set monotone: false to allow"
                )
        if not (isinstance(fs["n_hat"], int) and not isinstance(fs["n_hat"], bool) and fs["n_hat"] >= 0):
            raise RopeMethodError(f"{where}: n_hat must be an integer >= 0, got {fs['n_hat']!r}")
        if "mscale" in fs:
            _number(fs["mscale"], f"{where}: mscale", 0.0, strict=True)
    if p["mscale"] is not None:
        _number(p["mscale"], "longrope: mscale", 0.0, strict=True)


def _build_longrope(s: float, p: dict, g: RopeGeometry) -> dict:
    sets = _factor_sets(s, p, g)
    mscale = p["mscale"] if p["mscale"] is not None else longrope_mscale(s, g.original_context)
    common = {"original_max_position_embeddings": g.original_context, "rope_theta": g.base}
    builtin_ok = all(fs["n_hat"] == 0 and "mscale" not in fs for fs in sets) and (
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
            # general form: [{max_length, factors, n_hat, mscale}], one with max_length null; a set's own
            # mscale (optional) replaces the cos/sin scale for the sequences it serves
            "factor_sets": None,
            "mscale": None,  # cos/sin scale; null = sqrt(1 + ln s / ln L)
            "monotone": True,  # require non-decreasing factors (the paper's constraint)
        },
        description="LongRoPE (Ding et al. 2024): searched per-dimension factors, n_hat, mscale",
    )
)


# --- LongRoPE2: the original RoPE for short sequences, the searched factors for long ones ---------


def with_original_rope_below(scale: float, params: dict, geometry: RopeGeometry, short_mscale: float | None = 1.0,
                             max_length: int | None = None) -> dict:
    """``longrope`` parameters that rotate sequences of at most ``max_length`` tokens (default: the original
    context L) with the original RoPE and longer ones with the long factor set of ``params``.

    LongRoPE2's mixed context window model (Shang et al. 2025, section 3.3 and App. B): short
    windows keep the original RoPE, long ones the rescaled RoPE, and inference switches by length.
    ``short_mscale`` is the cos/sin scale of the short set: 1 is the original RoPE (the paper's
    words); None keeps the long set's mscale for short sequences too, as the released code does
    (microsoft/nnscaler examples/longrope2 runs transformers' ``longrope`` type, whose attention
    factor scales every length).
    """
    full = resolve_params("longrope", params)
    long_set = _factor_sets(scale, full, geometry)[-1]
    short = {"max_length": int(max_length or geometry.original_context), "factors": [1.0] * geometry.n_pairs,
             "n_hat": 0}
    if short_mscale is not None:
        short["mscale"] = float(short_mscale)
    return {**{k: v for k, v in full.items() if k not in ("factors", "n_hat", "short_factors", "short_max_length",
                                                          "short_n_hat", "factor_sets")},
            "factor_sets": [short, {**long_set, "max_length": None}]}


def rope_at_length(rope_parameters: dict, seq_len: int) -> dict:
    """The rope parameters that rotate every sequence as these rotate one of ``seq_len`` tokens: the
    one factor set a LongRoPE model picks at that length (built-in ``longrope`` or ours); other
    types, which do not switch by length, unchanged."""
    rope_type = rope_parameters.get("rope_type")
    if rope_type == "longrope":
        original = rope_parameters["original_max_position_embeddings"]
        chosen = rope_parameters["short_factor" if seq_len <= original else "long_factor"]
        return {**rope_parameters, "short_factor": list(chosen), "long_factor": list(chosen)}
    if rope_type == "longctx_longrope":
        return {**rope_parameters, "factor_sets": [{**_factor_set_for(rope_parameters, seq_len), "max_length": None}]}
    return dict(rope_parameters)
