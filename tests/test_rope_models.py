"""RoPE methods inside real transformers models: saved and reloaded, in LLaMA, Mistral and Qwen2,
during generation with a KV cache, and (Giraffe's randomized positions) during training.

All models are tiny random ones (head dim 16, original context L = 32) built on the spot.
"""

from __future__ import annotations

import pytest
import torch

import longctx  # noqa: F401  (what a user imports before a plain from_pretrained)
from longctx.evaluate.generation import greedy_generate
from longctx.rope import (
    apply_to_model,
    cache_is_stale,
    cos_sin,
    geometry_of,
    length_dependent_beyond,
    rope_spec_of,
    switch_lengths,
    training_inputs,
)
from longctx.rope.registry import METHODS

L = 32
PAIRS = 8  # head dim 16
RISING = [1.0 + 0.5 * i for i in range(PAIRS)]

# (method, scale, params): every method, and each form a method can take (built-in or custom type)
CASES = [
    ("none", 1.0, {}),
    ("pi", 4.0, {}),
    ("ntk", 4.0, {}),
    ("dynamic_ntk", 4.0, {}),
    ("yarn", 4.0, {}),
    ("yarn", 4.0, {"ramp": "paper"}),
    ("dynamic_yarn", 4.0, {}),
    ("dynamic_yarn", 4.0, {"ramp": "code", "attention_factor": 1.2}),
    ("giraffe_power", 4.0, {"power": 0.5}),
    ("giraffe_truncated", 4.0, {"cutoff_length": 64}),
    ("giraffe_randomized", 4.0, {}),
    ("xpos", 4.0, {"scale_base": 64.0}),
    ("longrope", 4.0, {"factors": RISING}),
    ("longrope", 4.0, {"factors": RISING, "short_factors": [1.0] * PAIRS}),
    ("longrope", 4.0, {"factors": RISING, "n_hat": 4, "short_factors": [1.0] * PAIRS, "short_max_length": 40}),
    ("longrope", 4.0, {"factor_sets": [{"max_length": 40, "factors": [1.0] * PAIRS},
                                       {"max_length": 64, "factors": [2.0] * PAIRS, "n_hat": 2},
                                       {"max_length": None, "factors": RISING, "n_hat": 3}]}),
]


def tiny(family: str = "llama", seed: int = 0):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
               "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_class, model_class = classes[family]
    torch.manual_seed(seed)
    config = config_class(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    model = model_class(config).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy choices are clear-cut
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_cases_cover_every_method():
    assert {m for m, _, _ in CASES} == set(METHODS)


@pytest.mark.parametrize("method,scale,params", CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_saved_model_reloads_with_plain_from_pretrained(tmp_path, method, scale, params):
    from transformers import AutoModelForCausalLM

    ids = tokens(3 * L)  # beyond L: dynamic scales, factor switches and n_hat all in play
    base = logits(tiny(), ids)
    model = apply_to_model(tiny(), method, scale, params)
    extended = logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(reloaded, ids), extended)
    assert reloaded.config.rope_parameters == model.config.rope_parameters
    assert rope_spec_of(reloaded.config)["method"] == method
    if method != "none":
        assert (extended - base).abs().max() > 1e-3, "the method changed nothing"
    # the rotary module inside the model computes exactly the tables the formula tests check
    positions = torch.arange(3 * L)[None]
    inside = reloaded.model.rotary_emb(torch.zeros(1), positions)
    table = cos_sin(reloaded.config.rope_parameters, 16, positions, max_position_embeddings=L)
    assert torch.equal(inside[0], table[0]) and torch.equal(inside[1], table[1])


def test_import_longctx_alone_is_enough_for_a_plain_from_pretrained_in_a_fresh_process(tmp_path):
    """`import longctx` registers the custom rope types once transformers loads (not before: the
    workflow's planning never imports transformers), so a user's own from_pretrained works."""
    import subprocess
    import sys

    model = apply_to_model(tiny(), "yarn", 4.0, {"ramp": "paper"})
    assert model.config.rope_parameters["rope_type"].startswith("longctx_")
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 50, (1, 3 * L))
    torch.save(logits(model, ids), tmp_path / "expected.pt")
    torch.save(ids, tmp_path / "ids.pt")
    script = f"""
import sys
import longctx
import longctx.config
assert "transformers" not in sys.modules, "longctx imported transformers before anything needed it"
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
ids = torch.load({str(tmp_path / "ids.pt")!r})
with torch.no_grad():
    out = model(ids).logits
assert torch.equal(out, torch.load({str(tmp_path / "expected.pt")!r})), "reloaded model differs"
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
@pytest.mark.parametrize("method,scale,params", [
    ("yarn", 4.0, {}), ("dynamic_ntk", 4.0, {}), ("giraffe_truncated", 4.0, {}),
    ("longrope", 4.0, {"factors": RISING, "n_hat": 4, "short_factors": [1.0] * PAIRS}),
])
def test_mistral_and_qwen2(tmp_path, family, method, scale, params):
    from transformers import AutoModelForCausalLM

    ids = tokens(3 * L)
    base = logits(tiny(family), ids)
    model = apply_to_model(tiny(family), method, scale, params)
    extended = logits(model, ids)
    assert (extended - base).abs().max() > 1e-3
    positions = torch.arange(3 * L)[None]
    inside = model.model.rotary_emb(torch.zeros(1), positions)
    assert torch.equal(inside[0], cos_sin(model.config.rope_parameters, 16, positions, max_position_embeddings=L)[0])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert torch.equal(logits(reloaded, ids), extended)


def test_extending_twice_keeps_the_original_geometry():
    model = apply_to_model(tiny(), "ntk", 4.0)
    assert model.config.rope_parameters["rope_theta"] > 10000.0
    apply_to_model(model, "pi", 2.0)
    assert model.config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert geometry_of(model.config).original_context == L
    assert torch.equal(logits(model, tokens(80)), logits(apply_to_model(tiny(), "pi", 2.0), tokens(80)))


# --- dynamic methods: per forward, not per history ------------------------------------------------


@pytest.mark.parametrize("method", ["dynamic_ntk", "dynamic_yarn"])
def test_dynamic_methods_depend_only_on_the_current_length(method):
    ids = tokens(3 * L)
    model = apply_to_model(tiny(), method, 4.0)
    fresh = logits(apply_to_model(tiny(), method, 4.0), ids[:, : 2 * L])
    logits(model, ids)  # a longer sequence first
    assert torch.equal(logits(model, ids[:, : 2 * L]), fresh)
    # within L they are plain RoPE
    assert torch.equal(logits(model, ids[:, :L]), logits(tiny(), ids[:, :L]))


def test_transformers_dynamic_module_alone_keeps_the_longest_scale():
    """Why hf_patch recomputes `dynamic` per forward: transformers' module on its own is stateful."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=16, num_attention_heads=1, head_dim=16, max_position_embeddings=L,
                         rope_parameters={"rope_type": "dynamic", "factor": 1.0, "rope_theta": 10000.0})
    x = torch.zeros(1)
    fresh = LlamaRotaryEmbedding(config)(x, torch.arange(2 * L)[None])[0]
    used = LlamaRotaryEmbedding(config)
    used(x, torch.arange(3 * L)[None])
    assert not torch.equal(used(x, torch.arange(2 * L)[None])[0], fresh)
    config.longctx_rope = {"method": "dynamic_ntk"}  # what apply_to_model records
    used = LlamaRotaryEmbedding(config)
    used(x, torch.arange(3 * L)[None])
    assert torch.equal(used(x, torch.arange(2 * L)[None])[0], fresh)


# --- generation with a KV cache ----------------------------------------------------------------


def from_scratch(model, ids, n):
    """Greedy decoding with a full forward per token: the reference a cache must reproduce."""
    seq = ids
    for _ in range(n):
        seq = torch.cat([seq, logits(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, ids.shape[1]:]


def naive_cached(model, ids, n, feed=None):
    """Greedy decoding with a cache that is never recomputed (what a plain cached loop does).

    Returns the tokens and the logits each step scored; with ``feed`` the given tokens are fed
    instead of the model's own choices (to score the same continuation as ``scratch_logits``).
    """
    from transformers import DynamicCache

    cache, out, chosen = DynamicCache(config=model.config), [], []
    with torch.no_grad():
        step = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
        for k in range(n):
            out.append(step)
            token = feed[:, k:k + 1] if feed is not None else step.argmax(-1, keepdim=True)
            chosen.append(token)
            if k + 1 < n:
                pos = torch.tensor([[ids.shape[1] + k]])
                step = model(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True).logits[:, -1]
    return torch.cat(chosen, dim=1), torch.stack(out, dim=1)


def scratch_logits(model, ids, new_tokens):
    seq = torch.cat([ids, new_tokens], dim=1)
    n = ids.shape[1]
    return torch.stack([logits(model, seq[:, : n + k])[:, -1] for k in range(new_tokens.shape[1])], dim=1)


# (method, params, prompt length, whether a never-recomputed cache picks other tokens here)
GENERATION_CASES = [
    ("longrope", {"factors": [8.0] * PAIRS, "short_factors": [1.0] * PAIRS}, L - 4, True),  # built-in `longrope`
    ("longrope", {"factors": RISING, "n_hat": 2, "short_factors": [1.0] * PAIRS, "short_n_hat": 0}, L - 4, True),
    ("dynamic_ntk", {}, L - 2, False),
    ("dynamic_yarn", {"ramp": "paper"}, L + 3, True),  # tokens_differ found with this ramp
]


@pytest.mark.parametrize("method,params,prompt,tokens_differ", GENERATION_CASES,
                         ids=[c[0] + str(i) for i, c in enumerate(GENERATION_CASES)])
def test_cached_generation_across_a_switch_equals_recomputing(method, params, prompt, tokens_differ):
    model = apply_to_model(tiny(), method, 4.0, params)
    ids = tokens(prompt, seed=3)
    n = 10
    expected = from_scratch(model, ids, n)
    assert len(set(expected[0].tolist())) > 2, "a degenerate continuation would prove little"
    assert torch.equal(greedy_generate(model, ids, n), expected)
    # the test can fail: a cache kept across the switch scores the same tokens differently ...
    crossing = [k for k in range(n) if cache_is_stale(model.config, prompt + k - 1, prompt + k)]
    assert crossing, "the generated span must cross a switch"
    _, naive = naive_cached(model, ids, n, feed=expected)
    exact = scratch_logits(model, ids, expected)
    assert (naive - exact).abs().amax(-1).max() > 1e-2
    before = [k for k in range(n) if prompt + k <= L] if method == "longrope" else []
    if before:  # ... while before the switch the cache is right
        assert torch.allclose(naive[:, before], exact[:, before], atol=1e-4)
    if tokens_differ:  # ... and here it even picks other tokens
        assert not torch.equal(naive_cached(model, ids, n)[0], expected)


def test_cached_generation_with_a_static_method_never_recomputes():
    model = apply_to_model(tiny(), "yarn", 4.0)
    ids = tokens(L - 4, seed=3)
    assert not any(cache_is_stale(model.config, n, n + 1) for n in range(1, 4 * L))
    assert torch.equal(greedy_generate(model, ids, 10), from_scratch(model, ids, 10))


def test_where_the_cache_goes_stale():
    longrope = apply_to_model(tiny(), "longrope", 4.0, {"factors": RISING, "short_factors": [1.0] * PAIRS}).config
    assert switch_lengths(longrope) == [L] and length_dependent_beyond(longrope) is None
    assert [n for n in range(1, 100) if cache_is_stale(longrope, n, n + 1)] == [L]
    buckets = apply_to_model(tiny(), "longrope", 4.0, {"factor_sets": [
        {"max_length": 40, "factors": [1.0] * PAIRS}, {"max_length": 64, "factors": [2.0] * PAIRS},
        {"max_length": None, "factors": [4.0] * PAIRS}]}).config
    assert switch_lengths(buckets) == [40, 64]
    assert [n for n in range(1, 100) if cache_is_stale(buckets, n, n + 1)] == [40, 64]
    for method in ("dynamic_ntk", "dynamic_yarn"):
        config = apply_to_model(tiny(), method, 4.0).config
        assert length_dependent_beyond(config) == L
        assert [n for n in range(1, 40) if cache_is_stale(config, n, n + 1)] == list(range(L, 40))


# --- Giraffe randomized positions ----------------------------------------------------------------


def test_randomized_positions_for_training():
    model = apply_to_model(tiny(), "giraffe_randomized", 4.0)
    T = 2048
    batch = training_inputs(model.config, 4, T, generator=torch.Generator().manual_seed(0))
    pos = batch["position_ids"]
    assert pos.shape == (4, T) and pos.dtype == torch.float32
    assert (pos.diff(dim=-1) >= 0).all() and (pos > 0).all() and (pos[:, -1] <= T).all()
    assert (pos.diff(dim=-1) < 2).all()  # U[0, 2) steps, possibly scaled down
    assert abs(float(pos[:, -1].mean()) / T - 1) < 0.05  # mean step about 1
    assert not torch.equal(pos[0], pos[1])  # drawn per row
    again = training_inputs(model.config, 4, T, generator=torch.Generator().manual_seed(0))["position_ids"]
    assert torch.equal(again, pos)  # seeded
    assert batch["attention_mask"].shape == (4, T) and bool(batch["attention_mask"].all())
    assert training_inputs(apply_to_model(tiny(), "pi", 4.0).config, 4, T) == {}


def test_randomized_positions_reach_the_model_causally():
    model = apply_to_model(tiny(), "giraffe_randomized", 4.0)
    ids = tokens(64)
    inputs = training_inputs(model.config, 1, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # use_cache=False, as in training (longctx.loss)
        out = model(input_ids=ids, use_cache=False, **inputs).logits
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % 96
        out_changed = model(input_ids=changed, use_cache=False, **inputs).logits
        # without the all-ones mask, transformers reads the positions as packed sequences
        unmasked = model(input_ids=ids, use_cache=False, position_ids=inputs["position_ids"]).logits
    assert torch.equal(out[:, :-1], out_changed[:, :-1])  # causal
    assert (out - logits(model, ids)).abs().max() > 1e-3  # the positions are used
    assert (unmasked - out).abs().max() > 1e-3
    # at inference it is PI at the same scale
    assert torch.equal(logits(model, ids), logits(apply_to_model(tiny(), "pi", 4.0), ids))


def test_yarn_on_a_mistral_records_its_familys_betas_resolved(tmp_path):
    model = apply_to_model(tiny("mistral"), "yarn", 4.0)
    assert model.config.rope_parameters["beta_fast"] == 128.0 and model.config.rope_parameters["beta_slow"] == 2.0
    model.save_pretrained(tmp_path)
    saved = rope_spec_of(type(model.config).from_pretrained(tmp_path))["params"]
    assert (saved["alpha"], saved["beta"], saved["ramp"], saved["mscale_coefficient"]) == (2.0, 128.0, "code", 0.07)
