"""Each RoPE method's frequencies and cos/sin tables against the paper's formula in float64.

The reference functions below are written from the papers' formulas (PI, NTK-aware, YaRN,
Giraffe, xPos, LongRoPE; and, for YaRN's "code" ramp and the Giraffe bases, from the released code) in numpy float64, independently of
``longctx.rope``. Frequencies must agree to 1e-6 relative. transformers computes RoPE in float32,
so an angle m * theta_i carries a relative error of about 1e-6 and cos/sin an absolute error of
about 1e-6 * (1 + |angle|): the tables are compared with that per-entry tolerance, at positions
up to a few times L (where the angles stay below a few hundred radians).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longctx  # noqa: F401  (registers the custom rope types)
from longctx.rope import RopeGeometry, RopeMethodError, build_rope_parameters, cos_sin, inverse_frequencies
from longctx.rope.registry import METHODS

RTOL = 1e-6


# --- float64 reference formulas ------------------------------------------------------------------


def ref_theta(d: int, b: float) -> np.ndarray:
    return b ** (-np.arange(0, d, 2, dtype=np.float64) / d)


def ref_pi(d, b, s):
    return ref_theta(d, b) / s


def ref_ntk(d, b, s):
    return ref_theta(d, b * s ** (d / (d - 2)))


def ref_dynamic_ntk(d, b, L, length):
    return ref_ntk(d, b, max(1.0, length / L))


def ref_yarn_paper(d, b, L, s, alpha=1.0, beta=32.0):
    theta = ref_theta(d, b)
    r = L * theta / (2 * math.pi)  # rotations of pair i within the original context
    gamma = np.clip((r - alpha) / (beta - alpha), 0.0, 1.0)
    return (1 - gamma) * theta / s + gamma * theta


def ref_yarn_code(d, b, L, s, alpha=1.0, beta=32.0):
    """jquesnelle/yarn: ramp in the pair index between the floor/ceil correction dimensions."""
    theta = ref_theta(d, b)
    if s == 1:
        return theta

    def dim_of(rotations):
        return d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(b))

    low, high = max(math.floor(dim_of(beta)), 0), min(math.ceil(dim_of(alpha)), d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp
    return theta / s * (1 - extrapolate) + theta * extrapolate


def ref_yarn_mscale(s):
    return 1.0 if s <= 1 else 0.1 * math.log(s) + 1


def ref_longrope_angles(d, b, lambdas, n_hat, positions):
    theta = ref_theta(d, b)
    pos = np.asarray(positions, dtype=np.float64)[:, None]
    return np.where(pos < n_hat, pos * theta, pos * theta / np.asarray(lambdas, dtype=np.float64))


def ref_longrope_mscale(s, L):
    return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(L))


def ref_longrope_scales(mscale, n_hat, positions):
    """cos/sin scale per position: the first n_hat keep the original RoPE, unscaled (microsoft/LongRoPE)."""
    return np.where(np.asarray(positions)[:, None] < n_hat, 1.0, mscale)


def ref_giraffe(d, b, s, power=0.0, cutoff=None, a_div=8.0, rho_div=16.0):
    f = ref_theta(d, b) / s * (1 - 2 * np.arange(d // 2) / d) ** power
    if cutoff:
        beta = 2 * math.pi / cutoff
        f = np.where(f >= beta, f, np.where(f >= beta / a_div, beta / rho_div, 0.0))
    return f


def ref_cos_sin(angles: np.ndarray, mscale: float):
    emb = np.concatenate([angles, angles], axis=-1)
    return np.cos(emb) * mscale, np.sin(emb) * mscale


def assert_table_close(actual: torch.Tensor, expected: np.ndarray, angles: np.ndarray):
    """|error| <= 2e-6 * (1 + |angle|): float32 angles lose ~1e-7 relative, cos/sin follow."""
    emb = np.abs(np.concatenate([angles, angles], axis=-1))
    err = np.abs(actual.double().numpy() - expected)
    bound = 2e-6 * (1 + emb)
    assert (err <= bound).all(), f"worst excess {np.max(err - bound):.3g} (max err {err.max():.3g})"


def freqs(method, scale, params, geometry, seq_len=None):
    rp = build_rope_parameters(method, scale, params, geometry)
    return inverse_frequencies(rp, geometry.head_dim, seq_len, max_position_embeddings=geometry.original_context).numpy()


LLAMA = RopeGeometry(head_dim=128, base=10000.0, original_context=4096)
SMOL = RopeGeometry(head_dim=64, base=100000.0, original_context=8192)
SMALL = RopeGeometry(head_dim=16, base=10000.0, original_context=64)


# --- each method against its formula -------------------------------------------------------------


@pytest.mark.parametrize("g", [LLAMA, SMOL, SMALL], ids=["llama", "smollm2", "small"])
@pytest.mark.parametrize("s", [1.0, 2.0, 4.0, 8.0, 16.0])
def test_static_methods_match_float64_formulas(g, s):
    d, b, L = g.head_dim, g.base, g.original_context
    np.testing.assert_allclose(freqs("none", s, {}, g), ref_theta(d, b), rtol=RTOL)
    np.testing.assert_allclose(freqs("pi", s, {}, g), ref_pi(d, b, s), rtol=RTOL)
    np.testing.assert_allclose(freqs("ntk", s, {}, g), ref_ntk(d, b, s), rtol=RTOL)
    np.testing.assert_allclose(freqs("yarn", s, {"ramp": "paper"}, g), ref_yarn_paper(d, b, L, s), rtol=RTOL)
    np.testing.assert_allclose(freqs("yarn", s, {"ramp": "code"}, g), ref_yarn_code(d, b, L, s), rtol=RTOL)
    np.testing.assert_allclose(freqs("yarn", s, {"alpha": 2, "beta": 16, "ramp": "paper"}, g),
                               ref_yarn_paper(d, b, L, s, 2, 16), rtol=RTOL)
    np.testing.assert_allclose(freqs("giraffe_power", s, {"power": 0.5}, g), ref_giraffe(d, b, 1, 0.5), rtol=RTOL)
    np.testing.assert_allclose(freqs("giraffe_truncated", s, {}, g), ref_giraffe(d, b, s, cutoff=L), rtol=RTOL)
    np.testing.assert_allclose(freqs("giraffe_truncated", s, {"cutoff_length": 4 * L}, g),
                               ref_giraffe(d, b, s, cutoff=4 * L), rtol=RTOL)
    np.testing.assert_allclose(freqs("giraffe_randomized", s, {}, g), ref_pi(d, b, s), rtol=RTOL)
    lambdas = np.linspace(1.0, 1.25 * s, d // 2)
    np.testing.assert_allclose(freqs("longrope", s, {"factors": lambdas.tolist()}, g),
                               ref_theta(d, b) / lambdas, rtol=RTOL)


@pytest.mark.parametrize("s", [2.0, 4.0, 16.0])
def test_giraffe_power_basis_alone_by_default_as_its_training_script(s):
    """Giraffe's script takes --scale-power or --scale-context, never both: the power basis divides
    by no linear scale (the slowest pair of a 128-dim head slows 8x at p = 0.5, not 8s x);
    ``linear_scale: true`` is the combination, theta_i / s * (1 - 2i/d)^p."""
    g = LLAMA
    d, b = g.head_dim, g.base
    alone = freqs("giraffe_power", s, {}, g)
    np.testing.assert_allclose(alone, ref_theta(d, b) * (1 - 2 * np.arange(d // 2) / d) ** 0.5, rtol=RTOL)
    assert math.isclose(ref_theta(d, b)[-1] / alone[-1], 8.0, rel_tol=1e-5)
    np.testing.assert_allclose(freqs("giraffe_power", s, {"linear_scale": True}, g), ref_giraffe(d, b, s, 0.5),
                               rtol=RTOL)


@pytest.mark.parametrize("g", [LLAMA, SMOL, SMALL], ids=["llama", "smollm2", "small"])
def test_dynamic_methods_follow_the_current_length(g):
    d, b, L = g.head_dim, g.base, g.original_context
    for length in [1, L // 2, L, L + 1, 2 * L, 3 * L + 7, 16 * L]:
        s = max(1.0, length / L)
        np.testing.assert_allclose(freqs("dynamic_ntk", 4, {}, g, length), ref_dynamic_ntk(d, b, L, length), rtol=RTOL)
        np.testing.assert_allclose(freqs("dynamic_yarn", 4, {"ramp": "paper"}, g, length), ref_yarn_paper(d, b, L, s),
                                   rtol=RTOL)
        np.testing.assert_allclose(freqs("dynamic_yarn", 4, {"ramp": "code"}, g, length),
                                   ref_yarn_code(d, b, L, s), rtol=RTOL)


def test_truncated_basis_bands():
    """Frequencies >= beta kept, [beta/8, beta) set to beta/16, below beta/8 set to 0."""
    g = RopeGeometry(64, 10000.0, 256)
    f = freqs("giraffe_truncated", 1, {"cutoff_length": 256}, g)
    theta, beta = ref_theta(64, 10000.0), 2 * math.pi / 256
    assert np.allclose(f[theta >= beta], theta[theta >= beta], rtol=RTOL, atol=0)
    middle = (theta < beta) & (theta >= beta / 8)
    assert middle.any() and np.allclose(f[middle], beta / 16, rtol=RTOL)
    assert (theta < beta / 8).any() and (f[theta < beta / 8] == 0).all()


# --- cos/sin tables as the model sees them ---------------------------------------------------------


def _positions(n):
    return torch.arange(n)[None]


@pytest.mark.parametrize("method,params,ref", [
    ("pi", {}, lambda g, s, n: (ref_pi(g.head_dim, g.base, s), 1.0)),
    ("ntk", {}, lambda g, s, n: (ref_ntk(g.head_dim, g.base, s), 1.0)),
    ("yarn", {"ramp": "paper"}, lambda g, s, n: (ref_yarn_paper(g.head_dim, g.base, g.original_context, s), ref_yarn_mscale(s))),
    ("yarn", {"ramp": "code"},
     lambda g, s, n: (ref_yarn_code(g.head_dim, g.base, g.original_context, s), ref_yarn_mscale(s))),
    ("dynamic_ntk", {}, lambda g, s, n: (ref_dynamic_ntk(g.head_dim, g.base, g.original_context, n), 1.0)),
    ("dynamic_yarn", {"ramp": "paper"}, lambda g, s, n: (
        ref_yarn_paper(g.head_dim, g.base, g.original_context, max(1, n / g.original_context)),
        ref_yarn_mscale(max(1, n / g.original_context)))),
    ("giraffe_power", {"power": 0.25}, lambda g, s, n: (ref_giraffe(g.head_dim, g.base, 1, 0.25), 1.0)),
    ("giraffe_power", {"power": 0.25, "linear_scale": True},
     lambda g, s, n: (ref_giraffe(g.head_dim, g.base, s, 0.25), 1.0)),
    ("giraffe_truncated", {}, lambda g, s, n: (ref_giraffe(g.head_dim, g.base, s, cutoff=g.original_context), 1.0)),
    ("longrope", {}, lambda g, s, n: (ref_pi(g.head_dim, g.base, s), ref_longrope_mscale(s, g.original_context))),
])
@pytest.mark.parametrize("n", [48, 64, 200])
def test_cos_sin_tables_match_formula(method, params, ref, n):
    g, s = SMALL, 4.0
    rp = build_rope_parameters(method, s, params, g)
    cos, sin = cos_sin(rp, g.head_dim, _positions(n), max_position_embeddings=g.original_context)
    inv_freq, mscale = ref(g, s, n)
    angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq
    ref_cos, ref_sin = ref_cos_sin(angles, mscale)
    assert_table_close(cos[0], ref_cos, angles)
    assert_table_close(sin[0], ref_sin, angles)


@pytest.mark.parametrize("n_hat", [0, 1, 5, 16])
def test_longrope_tables_keep_the_original_rope_unscaled_at_the_first_n_hat_positions(n_hat):
    g, s = SMALL, 4.0
    lambdas = np.linspace(1.0, 5.0, g.n_pairs)
    rp = build_rope_parameters("longrope", s, {"factors": lambdas.tolist(), "n_hat": n_hat}, g)
    assert rp["rope_type"] == ("longrope" if n_hat == 0 else "longctx_longrope")
    positions = np.arange(0, 200)
    cos, sin = cos_sin(rp, g.head_dim, torch.from_numpy(positions)[None])
    angles = ref_longrope_angles(g.head_dim, g.base, lambdas, n_hat, positions)
    mscale = ref_longrope_mscale(s, g.original_context)
    ref_cos, ref_sin = ref_cos_sin(angles, ref_longrope_scales(mscale, n_hat, positions))
    assert_table_close(cos[0], ref_cos, angles)
    assert_table_close(sin[0], ref_sin, angles)
    # the first n_hat rows are unchanged RoPE's exactly; the rest are scaled (mscale != 1 at s = 4)
    plain_cos, _ = cos_sin({"rope_type": "default", "rope_theta": g.base}, g.head_dim, torch.arange(200)[None])
    assert torch.equal(cos[0, :n_hat], plain_cos[0, :n_hat])
    assert cos[0, n_hat:].abs().max() > 1.01  # mscale at s = 4, L = 64 is 1.16


def test_longrope_short_and_long_sets_are_picked_by_length():
    g, s = SMALL, 4.0
    short, long = np.linspace(1.0, 1.5, g.n_pairs), np.linspace(1.0, 5.0, g.n_pairs)
    for n_hat in (0, 3):  # built-in `longrope`, then the custom type (n_hat needs it)
        rp = build_rope_parameters("longrope", s, {"short_factors": short.tolist(), "factors": long.tolist(),
                                                   "n_hat": n_hat, "short_n_hat": n_hat}, g)
        mscale = ref_longrope_mscale(s, g.original_context)
        for n, lambdas in [(g.original_context, short), (g.original_context + 1, long)]:
            positions = np.arange(n)
            cos, _ = cos_sin(rp, g.head_dim, torch.from_numpy(positions)[None])
            angles = ref_longrope_angles(g.head_dim, g.base, lambdas, n_hat, positions)
            assert_table_close(cos[0], ref_cos_sin(angles, ref_longrope_scales(mscale, n_hat, positions))[0], angles)


def test_longrope_length_buckets():
    g = SMALL
    sets = [{"max_length": 64, "factors": [1.0] * 8}, {"max_length": 128, "factors": [2.0] * 8},
            {"max_length": None, "factors": [4.0] * 8, "n_hat": 2}]
    rp = build_rope_parameters("longrope", 4, {"factor_sets": sets}, g)
    theta = ref_theta(g.head_dim, g.base)
    for n, lam in [(10, 1.0), (64, 1.0), (65, 2.0), (128, 2.0), (129, 4.0), (1000, 4.0)]:
        np.testing.assert_allclose(inverse_frequencies(rp, g.head_dim, n).numpy(), theta / lam, rtol=RTOL)


# --- against transformers' own implementations ---------------------------------------------------


def _hf_freqs(rope_parameters, g, seq_len=None):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=g.head_dim, num_attention_heads=1, head_dim=g.head_dim,
                         max_position_embeddings=g.original_context, rope_parameters=dict(rope_parameters))
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, None, seq_len=seq_len)


@pytest.mark.parametrize("g", [LLAMA, SMOL, SMALL], ids=["llama", "smollm2", "small"])
def test_custom_types_equal_the_transformers_types_they_generalise(g):
    from longctx.rope.methods import dynamic_ntk_inv_freq, giraffe_inv_freq, longrope_inv_freq

    L, d = g.original_context, g.head_dim
    for length in (L // 2, L, 3 * L, 10 * L + 3):
        # dynamic NTK (our type, used when max_position_embeddings != L) vs transformers' `dynamic`, factor 1
        ours, _ = dynamic_ntk_inv_freq({"rope_theta": g.base, "original_max_position_embeddings": L}, d, length)
        hf, _ = _hf_freqs({"rope_type": "dynamic", "factor": 1.0, "rope_theta": g.base}, g, length)
        assert torch.equal(ours, hf)
        # dynamic YaRN with the code ramp vs transformers' `yarn` at s = len / L
        s = max(1.0, length / L)
        rp = build_rope_parameters("dynamic_yarn", 2, {"ramp": "code"}, g)
        ours = inverse_frequencies(rp, d, length)
        if s > 1:
            hf, hf_scale = _hf_freqs({"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L,
                                      "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": g.base}, g)
            np.testing.assert_allclose(ours.numpy(), hf.double().numpy(), rtol=RTOL)
            assert math.isclose(hf_scale, ref_yarn_mscale(s), rel_tol=1e-12)
    # Giraffe with neither power nor truncation is transformers' `linear`
    ours, _ = giraffe_inv_freq({"rope_theta": g.base, "factor": 4.0, "power": 0.0}, d)
    hf, _ = _hf_freqs({"rope_type": "linear", "factor": 4.0, "rope_theta": g.base}, g)
    assert torch.equal(ours, hf)
    # LongRoPE's custom type (for n_hat / buckets) computes transformers' `longrope` frequencies
    lam = np.linspace(1, 6, d // 2).tolist()
    custom = {"rope_theta": g.base, "attention_factor": 1.0, "factor_sets": [{"max_length": None, "factors": lam}]}
    hf, _ = _hf_freqs({"rope_type": "longrope", "short_factor": lam, "long_factor": lam, "factor": 4.0,
                       "original_max_position_embeddings": L, "rope_theta": g.base}, g, 2 * L)
    assert torch.equal(longrope_inv_freq(custom, d, 2 * L)[0], hf)


def test_builtin_types_are_used_where_exact():
    g = SMOL
    assert build_rope_parameters("pi", 4, {}, g)["rope_type"] == "linear"
    assert build_rope_parameters("ntk", 4, {}, g)["rope_type"] == "default"
    assert build_rope_parameters("yarn", 4, {"ramp": "code"}, g)["rope_type"] == "yarn"
    assert build_rope_parameters("longrope", 4, {}, g)["rope_type"] == "longrope"
    assert build_rope_parameters("dynamic_ntk", 4, {}, g)["rope_type"] == "dynamic"
    # transformers' `dynamic` reads L from max_position_embeddings: a config that says otherwise
    # gets our type, which carries L itself
    other = RopeGeometry(64, 100000.0, 8192, max_position_embeddings=32768)
    rp = build_rope_parameters("dynamic_ntk", 4, {}, other)
    assert rp["rope_type"] == "longctx_dynamic_ntk" and rp["original_max_position_embeddings"] == 8192
    np.testing.assert_allclose(inverse_frequencies(rp, 64, 16384).numpy(), ref_dynamic_ntk(64, 1e5, 8192, 16384),
                               rtol=RTOL)


@pytest.mark.parametrize("g", [LLAMA, SMOL, SMALL], ids=["llama", "smollm2", "small"])
def test_yarn_by_default_is_the_released_codes_ramp_which_is_transformers_yarn(g):
    # every released YaRN model and LongRoPE's YaRN baseline run this ramp (jquesnelle/yarn)
    for s in (2.0, 8.0):
        rp = build_rope_parameters("yarn", s, {}, g)
        assert rp["rope_type"] == "yarn" and (rp["beta_fast"], rp["beta_slow"]) == (32.0, 1.0)
        hf, _ = _hf_freqs({"rope_type": "yarn", "factor": s, "original_max_position_embeddings": g.original_context,
                           "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": g.base}, g)
        np.testing.assert_allclose(inverse_frequencies(rp, g.head_dim).numpy(), hf.double().numpy(), rtol=RTOL)


def test_yarn_betas_and_mscale_default_to_the_model_familys_and_an_explicit_value_wins():
    mistral = RopeGeometry(128, 10000.0, 8192, model_type="mistral")
    llama = RopeGeometry(128, 10000.0, 4096, model_type="llama")
    # jquesnelle/yarn's Mistral: beta_fast 128, beta_slow 2, cos/sin times 0.07 ln s + 1
    rp = build_rope_parameters("yarn", 8, {}, mistral)
    assert (rp["beta_fast"], rp["beta_slow"]) == (128.0, 2.0)
    assert math.isclose(_hf_freqs(rp, mistral)[1], 0.07 * math.log(8) + 1, rel_tol=1e-12)
    rp = build_rope_parameters("yarn", 8, {}, llama)
    assert (rp["beta_fast"], rp["beta_slow"]) == (32.0, 1.0)
    assert math.isclose(_hf_freqs(rp, llama)[1], 0.1 * math.log(8) + 1, rel_tol=1e-12)
    # dynamic YaRN (our type) at 4 L: s = 4; cos^2 + sin^2 is the scale squared
    cos, sin = cos_sin(build_rope_parameters("dynamic_yarn", 8, {}, mistral), 128, torch.tensor([[4 * 8192 - 1]]))
    np.testing.assert_allclose((cos**2 + sin**2).sqrt().numpy(), 0.07 * math.log(4) + 1, rtol=1e-6)
    rp = build_rope_parameters("yarn", 8, {"beta": 64}, mistral)
    assert (rp["beta_fast"], rp["beta_slow"]) == (64.0, 2.0)
    rp = build_rope_parameters("dynamic_yarn", 8, {"ramp": "paper"}, mistral)
    assert (rp["alpha"], rp["beta"]) == (2.0, 128.0)


def test_ntk_equals_dynamic_ntk_at_the_target_length():
    g = SMOL
    np.testing.assert_allclose(freqs("ntk", 4, {}, g), freqs("dynamic_ntk", 4, {}, g, 4 * g.original_context),
                               rtol=RTOL)


def test_builtin_yarn_attention_factor_is_the_papers():
    g = LLAMA
    for s in (2.0, 8.0, 32.0):
        _, scale = _hf_freqs(build_rope_parameters("yarn", s, {"ramp": "code"}, g), g)
        assert math.isclose(scale, 0.1 * math.log(s) + 1, rel_tol=1e-12)
        _, scale = _hf_freqs(build_rope_parameters("longrope", s, {}, g), g)
        assert math.isclose(scale, math.sqrt(1 + math.log(s) / math.log(g.original_context)), rel_tol=1e-12)


# --- identities --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_scale_one_is_unchanged_rope(method):
    """At s = 1 every method is plain RoPE: identical cos/sin tables, bit for bit.

    The Giraffe bases change the basis at any scale; with the basis switched off (power 0 /
    a cut-off wavelength T beyond every wavelength) they too are the identity. The dynamic methods
    are the identity for every length up to L (s = max(1, len/L) = 1). xPos leaves the rotation
    alone at every scale; its logit decay is checked in test_rope_xpos (gamma -> inf is the identity).
    """
    g = SMALL
    params = {"giraffe_power": {"power": 0.0}, "giraffe_truncated": {"cutoff_length": 1e30}}.get(method, {})
    positions = _positions(g.original_context)
    plain = cos_sin({"rope_type": "default", "rope_theta": g.base}, g.head_dim, positions)
    rp = build_rope_parameters(method, 1.0, params, g)
    got = cos_sin(rp, g.head_dim, positions, max_position_embeddings=g.original_context)
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])


def test_longrope_with_all_factors_s_and_no_n_hat_is_pi():
    for g in (LLAMA, SMOL, SMALL):
        for s in (2.0, 4.0, 8.0):
            positions = _positions(3 * g.original_context)
            lr = build_rope_parameters("longrope", s, {"factors": [s] * g.n_pairs, "n_hat": 0, "mscale": 1.0}, g)
            pi = build_rope_parameters("pi", s, {}, g)
            np.testing.assert_allclose(inverse_frequencies(lr, g.head_dim, 2 * g.original_context).numpy(),
                                       inverse_frequencies(pi, g.head_dim).numpy(), rtol=RTOL)
            (c1, s1), (c2, s2) = cos_sin(lr, g.head_dim, positions), cos_sin(pi, g.head_dim, positions)
            angles = np.arange(positions.shape[1])[:, None] * ref_pi(g.head_dim, g.base, s)
            assert_table_close(c1[0], c2[0].double().numpy(), angles)
            assert_table_close(s1[0], s2[0].double().numpy(), angles)
    # with n_hat = 0 and the default factors (all s) it is PI times LongRoPE's mscale
    rp = build_rope_parameters("longrope", 4, {}, SMALL)
    assert rp["short_factor"] == [4.0] * SMALL.n_pairs and rp["attention_factor"] == ref_longrope_mscale(4, 64)


# --- property tests ----------------------------------------------------------------------------

geometries = st.builds(
    RopeGeometry,
    head_dim=st.integers(2, 128).map(lambda k: 2 * k),
    base=st.floats(100.0, 1e6),
    original_context=st.integers(16, 32768),
)
scales = st.floats(1.0, 64.0)


@settings(max_examples=60, deadline=None, database=None)
@given(g=geometries, s=scales)
def test_property_static_methods(g, s):
    d, b, L = g.head_dim, g.base, g.original_context
    theta = ref_theta(d, b)
    np.testing.assert_allclose(freqs("pi", s, {}, g), ref_pi(d, b, s), rtol=RTOL)
    ntk = freqs("ntk", s, {}, g)
    np.testing.assert_allclose(ntk, ref_ntk(d, b, s), rtol=RTOL)
    # NTK keeps the fastest pair and interpolates the slowest exactly by s
    assert math.isclose(ntk[0], 1.0) and math.isclose(ntk[-1], theta[-1] / s, rel_tol=RTOL)
    yarn = freqs("yarn", s, {"ramp": "paper"}, g)
    np.testing.assert_allclose(yarn, ref_yarn_paper(d, b, L, s), rtol=RTOL)
    # transformers' `yarn` blends in float32 with weights 1 - ramp; where the ramp is near 1 that
    # subtraction cancels, and the error grows with s (the two blended frequencies differ by s)
    np.testing.assert_allclose(freqs("yarn", s, {"ramp": "code"}, g), ref_yarn_code(d, b, L, s),
                               rtol=RTOL * max(1.0, s / 16))
    # every method only slows rotations down, between PI (theta/s) and no change
    for f in (ntk, yarn, freqs("giraffe_power", s, {"power": 0.7}, g), freqs("giraffe_truncated", s, {}, g)):
        assert (f <= theta * (1 + RTOL)).all()
    for f in (ntk, yarn):
        assert (f >= theta / s * (1 - RTOL)).all() and (np.diff(f) <= 0).all()
    np.testing.assert_allclose(freqs("giraffe_power", s, {"power": 0.7}, g), ref_giraffe(d, b, 1, 0.7), rtol=RTOL)
    np.testing.assert_allclose(freqs("giraffe_truncated", s, {}, g), ref_giraffe(d, b, s, cutoff=L), rtol=RTOL)


@settings(max_examples=60, deadline=None, database=None)
@given(g=geometries, s=scales, data=st.data())
def test_property_longrope_and_dynamic(g, s, data):
    d, b, L = g.head_dim, g.base, g.original_context
    steps = data.draw(st.lists(st.floats(0.0, 1.0), min_size=d // 2, max_size=d // 2))
    lambdas = np.minimum(1.0 + np.cumsum(steps) * (1.25 * s - 1) / max(1, d // 2), 1.25 * s)  # monotone, >= 1
    np.testing.assert_allclose(freqs("longrope", s, {"factors": lambdas.tolist()}, g), ref_theta(d, b) / lambdas,
                               rtol=RTOL)
    length = data.draw(st.integers(1, 64 * L))
    np.testing.assert_allclose(freqs("dynamic_ntk", s, {}, g, length), ref_dynamic_ntk(d, b, L, length), rtol=RTOL)
    ds = max(1.0, length / L)
    np.testing.assert_allclose(freqs("dynamic_yarn", s, {"ramp": "paper"}, g, length), ref_yarn_paper(d, b, L, ds),
                               rtol=RTOL)
    np.testing.assert_allclose(freqs("dynamic_yarn", s, {"ramp": "code"}, g, length), ref_yarn_code(d, b, L, ds),
                               rtol=RTOL)


@settings(max_examples=40, deadline=None, database=None)
@given(g=geometries, method=st.sampled_from(sorted(METHODS)))
def test_property_scale_one_is_identity(g, method):
    params = {"giraffe_power": {"power": 0.0}, "giraffe_truncated": {"cutoff_length": 1e30}}.get(method, {})
    rp = build_rope_parameters(method, 1.0, params, g)
    got = inverse_frequencies(rp, g.head_dim, g.original_context, max_position_embeddings=g.original_context)
    plain = inverse_frequencies({"rope_type": "default", "rope_theta": g.base}, g.head_dim)
    assert torch.equal(got, plain)


# --- parameter validation ------------------------------------------------------------------------


@pytest.mark.parametrize("method,scale,params,message", [
    ("pi", 0.5, {}, "scale must be a number >= 1"),
    ("yarn", float("nan"), {}, "scale must be a number >= 1"),
    ("warp", 2, {}, "unknown RoPE method 'warp'"),
    ("pi", 2, {"factor": 3}, "has no parameter"),
    ("longrope", 2, {"factors": [1.0] * 7}, "7 factors, but head dimension 16 needs 8"),
    ("longrope", 2, {"factors": [1.0, 2.0, 1.5, 2, 2, 2, 2, 2]}, "non-decreasing"),
    ("longrope", 2, {"factors": [0.5] * 8}, "every factor must be >= 1"),
    ("longrope", 2, {"n_hat": -1}, "n_hat must be an integer >= 0"),
    ("longrope", 2, {"short_factors": [1.0] * 9}, "9 factors"),
    ("longrope", 2, {"factor_sets": [{"max_length": 64, "factors": [1.0] * 8}]}, "exactly one factor set"),
    ("yarn", 2, {"alpha": 32, "beta": 1}, "beta (1.0) must be greater than alpha (32.0)"),
    ("yarn", 2, {"ramp": "smooth"}, "ramp must be 'paper' or 'code'"),
    ("giraffe_power", 2, {"power": -1}, "power (p) must be a number >= 0"),
    ("giraffe_power", 2, {"linear_scale": "yes"}, "linear_scale must be true or false"),
    ("giraffe_truncated", 2, {"cutoff_length": 0}, "cutoff_length (T) must be a number > 0"),
    ("giraffe_truncated", 2, {"rho_divisor": 4}, "rho_divisor (4.0) must be >= a_divisor (8.0)"),
])
def test_bad_parameters_are_named(method, scale, params, message):
    with pytest.raises(RopeMethodError, match=None) as info:
        build_rope_parameters(method, scale, params, SMALL)
    assert message in str(info.value)


def test_non_monotone_allowed_when_asked():
    rp = build_rope_parameters("longrope", 2, {"factors": [1.0, 2.0, 1.5, 2, 2, 2, 2, 2], "monotone": False}, SMALL)
    assert rp["long_factor"][2] == 1.5


def test_bad_geometry_is_named():
    with pytest.raises(RopeMethodError, match="head dimension must be an even integer"):
        build_rope_parameters("pi", 2, {}, RopeGeometry(15, 10000.0, 64))
    with pytest.raises(RopeMethodError, match="NTK-aware scaling needs a head dimension above 2"):
        build_rope_parameters("ntk", 2, {}, RopeGeometry(2, 10000.0, 64))
