"""xPos: rotary plus a per-pair decay zeta_i^((n-m)/gamma) of the logit of query n and key m.

It scales queries and keys differently, so it is applied inside SDPA attention (hf_patch wraps
transformers' registered SDPA function) rather than through cos/sin.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import longctx  # noqa: F401
from longctx.evaluate.generation import greedy_generate
from longctx.rope import RopeGeometry, RopeMethodError, apply_to_model, build_rope_parameters, cache_is_stale


def ref_xpos_attention(q, k, v, zeta, gamma, positions):
    """float64: softmax_m(sum_i q_i k_i zeta_i^((n-m)/gamma) / sqrt(d)) v, causal, one head."""
    d = q.shape[-1]
    z = np.concatenate([zeta, zeta])  # rotate_half layout: pair i is dims i and i + d/2
    n = positions[:, None].astype(np.float64)
    m = positions[None, :].astype(np.float64)
    decay = z[None, None, :] ** ((n - m)[..., None] / gamma)  # [T, T, d]
    logits = np.einsum("ni,mi,nmi->nm", q, k, decay) / math.sqrt(d)
    logits = np.where(m <= n, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


def test_zeta_is_the_papers():
    from longctx.rope.methods import xpos_zeta

    d = 16
    np.testing.assert_allclose(xpos_zeta(d).numpy(), [(i / (d / 2) + 0.4) / 1.4 for i in range(d // 2)], rtol=1e-15)


@pytest.mark.parametrize("gamma", [8.0, 64.0, 512.0])
def test_xpos_attention_matches_the_formula(gamma):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from longctx.rope.methods import xpos_zeta

    T, d = 48, 16
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, T, d, dtype=torch.float32) for _ in range(3))
    module = SimpleNamespace(config=SimpleNamespace(rope_parameters={"rope_type": "longctx_xpos", "scale_base": gamma,
                                                                     "rope_theta": 1e4}),
                             is_causal=True, num_key_value_groups=1, training=False)
    positions = torch.arange(100, 100 + T)[None]  # the decay depends on n - m only
    out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, None, scaling=d ** -0.5, position_ids=positions)
    ref = ref_xpos_attention(q[0, 0].double().numpy(), k[0, 0].double().numpy(), v[0, 0].double().numpy(),
                             xpos_zeta(d).numpy(), gamma, positions[0].numpy())
    np.testing.assert_allclose(out[0, :, 0].double().numpy(), ref, atol=2e-5)


def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def test_xpos_in_a_model_decays_and_generates_exactly():
    ids = torch.randint(0, 96, (1, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = tiny()(ids).logits
        xpos = apply_to_model(tiny(), "xpos", 1.0, {"scale_base": 16.0})
        decayed = xpos(ids).logits
        # gamma -> infinity: every factor is exactly 1 and the model is plain RoPE again
        same = apply_to_model(tiny(), "xpos", 1.0, {"scale_base": 1e30})(ids).logits
    assert (decayed - base).abs().max() > 1e-2 and torch.equal(same, base)
    assert not any(cache_is_stale(xpos.config, n, n + 1) for n in range(1, 200))
    prompt, n = ids[:, :20], 12
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, xpos(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy_generate(xpos, prompt, n), seq[:, 20:])


def test_xpos_needs_sdpa_and_a_representable_span():
    model = apply_to_model(tiny(), "xpos", 1.0, {"scale_base": 16.0})
    model.set_attn_implementation("eager")
    with pytest.raises(RopeMethodError, match="attn_implementation='sdpa'"):
        model(torch.zeros(1, 8, dtype=torch.long))
    model.set_attn_implementation("sdpa")
    with pytest.raises(RopeMethodError, match="beyond float32 range; use a scale_base of at least"):
        model(torch.zeros(1, 3000, dtype=torch.long))  # 1500 / 16 * ln(7/2) > 80
    with pytest.raises(RopeMethodError, match="scale_base"):
        build_rope_parameters("xpos", 2.0, {"scale_base": 0}, RopeGeometry(16, 1e4, 32))
