"""Batched greedy generation gives, row for row, what one-at-a-time generation gives."""

import pytest
import torch

from longctx.evaluate.generation import batched_greedy_generate, greedy_generate, plan_batches
from longctx.rope import apply_to_model

from conftest import tiny_llama

LENGTHS = (5, 17, 9, 30, 30, 12, 3)


def prompts(vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def one_at_a_time(model, ps, n, eos=None):
    return [greedy_generate(model, torch.tensor([p]), n, eos_token_id=eos)[0].tolist() for p in ps]


@pytest.mark.parametrize("method,params", [
    ("none", {}),
    ("pi", {}),
    ("yarn", {}),
    # short factors up to 20 tokens, long ones beyond: prompts straddle the switch, and
    # generation crosses it
    ("longrope", {"short_factors": [1.0] * 8, "factors": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.0],
                  "short_max_length": 20}),
    ("dynamic_ntk", {}),
])
def test_batched_equals_one_at_a_time(method, params):
    model = tiny_llama(vocab_size=96, context=16)  # head dim 16: 8 frequency pairs
    if method != "none":
        apply_to_model(model, method, 4.0, params)
    ps = prompts()
    expected = one_at_a_time(model, ps, 8)
    assert batched_greedy_generate(model, ps, 8, max_batch_size=4) == expected
    # one batch for all, whatever the RoPE method allows
    assert batched_greedy_generate(model, ps, 8, max_batch_size=64, max_batch_tokens=10**6) == expected


def test_rows_stop_at_eos_and_keep_their_order():
    model = tiny_llama(vocab_size=96, context=32)
    ps = prompts()
    free = one_at_a_time(model, ps, 8)
    # a token the third row emits after others: that row must stop there, the others go on
    at, eos = next((k, t) for k, t in enumerate(free[2]) if k > 0 and t not in free[2][:k])
    out = batched_greedy_generate(model, ps, 8, eos_token_id=eos, max_batch_size=8)
    assert out == one_at_a_time(model, ps, 8, eos=eos)
    assert out[2] == free[2][:at + 1]
    assert any(len(row) == 8 for row in out)


def test_plan_batches_respects_budgets_and_rope_switches():
    lengths = [100, 10, 12, 98, 11, 300]
    batches = plan_batches(lengths, 10, max_batch_size=2, max_batch_tokens=10**6)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) <= 2 for b in batches)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[10, 11], [12, 98], [100, 300]]
    # a token budget: (longest + new tokens) x rows
    batches = plan_batches(lengths, 10, max_batch_size=8, max_batch_tokens=250)
    assert all((max(lengths[i] for i in b) + 10) * len(b) <= 250 or len(b) == 1 for b in batches)
    # a factor switch at 50 separates the short prompts from the long ones
    batches = plan_batches(lengths, 10, max_batch_size=8, max_batch_tokens=10**6, switches=[50])
    assert {tuple(sorted(lengths[i] for i in b)) for b in batches} == {(10, 11, 12), (98, 100, 300)}
    # rows of 10 and 12 tokens, 5 new: the longer row passes a switch at 14 two steps before the other
    batches = plan_batches([10, 12], 5, switches=[14])
    assert len(batches) == 2
    # dynamic scaling beyond L = 50: different lengths beyond it never share a batch, equal ones may
    batches = plan_batches([60, 60, 70, 10, 12], 5, dynamic_beyond=50)
    assert sorted(sorted(b) for b in batches) == [[0, 1], [2], [3, 4]]
