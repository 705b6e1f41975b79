"""Attention backends and document masking of packed sequences: no token attends across documents."""

import numpy as np
import pytest
import torch

from longctx.train import attention as attn
from longctx.data import TokenFile
from longctx.artifacts import write_json
from longctx.train import LossModule, PackedSequences

from conftest import tiny_llama

# two packed rows: row 0 = document A (10 tokens) then B (22); row 1 = three documents
SEGMENTS = torch.tensor([[0] * 10 + [1] * 22, [0] * 5 + [1] * 12 + [2] * 15])


def packed_logits(model, ids, segments, backend, masking=True):
    """Logits the way the trainer feeds the model: restarted positions and the backend's mask."""
    model.set_attn_implementation(backend)
    kwargs = attn.attention_inputs(backend, segments, torch.float32, masking)
    positions = attn.document_positions(segments) if masking else None
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, **kwargs).logits


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_a_packed_document_sees_only_itself(backend):
    model = tiny_llama()
    ids = torch.randint(3, 96, SEGMENTS.shape, generator=torch.Generator().manual_seed(0))
    packed = packed_logits(model, ids, SEGMENTS, backend)
    for row, bounds in ((0, [(0, 10), (10, 32)]), (1, [(0, 5), (5, 17), (17, 32)])):
        for a, b in bounds:
            with torch.no_grad():
                alone = model(input_ids=ids[row : row + 1, a:b]).logits[0]
            torch.testing.assert_close(packed[row, a:b], alone, rtol=1e-5, atol=1e-5)
    # without masking the second document does see the first: the comparison can fail
    unmasked = packed_logits(model, ids, SEGMENTS, backend, masking=False)
    with torch.no_grad():
        alone = model(input_ids=ids[0:1, 10:]).logits[0]
    assert (unmasked[0, 10:] - alone).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_the_training_loss_of_a_packed_row_is_the_loss_of_its_documents(backend):
    """The trainer's loss module scores each document alone: no target and no attention crosses."""
    model = tiny_llama()
    ids = torch.randint(3, 96, SEGMENTS.shape, generator=torch.Generator().manual_seed(1))
    model.set_attn_implementation(backend)
    loss, logged = LossModule(model, chunk_size=7, backend=backend, document_masking=True)(ids, SEGMENTS)
    total, count = 0.0, 0
    for row, bounds in ((0, [(0, 10), (10, 32)]), (1, [(0, 5), (5, 17), (17, 32)])):
        for a, b in bounds:
            with torch.no_grad():
                logits = model(input_ids=ids[row : row + 1, a:b]).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[row, a + 1 : b], reduction="sum"))
            count += b - a - 1
    assert count == 64 - 5  # one target fewer per document
    assert float(logged) == pytest.approx(total / count, rel=1e-5)
    loss.backward()  # and it trains: gradients reach the weights
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_the_flex_attention_block_mask_is_causal_within_documents():
    from torch.nn.attention.flex_attention import create_mask

    B, T = SEGMENTS.shape
    flex = create_mask(attn.document_mask_function(SEGMENTS), B, 1, T, T, device="cpu")
    dense = attn.dense_document_mask(SEGMENTS)
    assert torch.equal(flex, dense)
    assert dense[0, 0, 12, 11] and not dense[0, 0, 12, 9] and not dense[0, 0, 3, 4]
    block = attn.attention_inputs("flex_attention", SEGMENTS, torch.float32, True)["attention_mask"]
    assert tuple(block.shape) == (B, 1, T, T)


def test_flash_attn_varlen_gets_one_row_with_every_document_start():
    segments = attn.row_segments(SEGMENTS)  # rows made distinct, so flattening never joins two documents
    (flat,) = attn.flatten_rows(segments)
    kwargs = attn.attention_inputs("flash_attention_2", flat, torch.float32, True)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 10, 32, 37, 49, 64]
    assert kwargs["max_length_q"] == 22
    with pytest.raises(attn.AttentionError, match="one row"):
        attn.attention_inputs("flash_attention_2", SEGMENTS, torch.float32, True)


def test_positions_restart_and_targets_stop_at_each_document():
    pos = attn.document_positions(SEGMENTS)
    assert pos[0].tolist() == list(range(10)) + list(range(22))
    randomized = torch.arange(32, dtype=torch.float32).expand(2, 32) * 1.5 + 0.25  # e.g. Giraffe's positions
    shifted = attn.document_positions(SEGMENTS, randomized)
    assert shifted[1, 5].item() == 0 and shifted[1, 6].item() == pytest.approx(1.5)
    targets = attn.document_targets(torch.arange(64).reshape(2, 32), SEGMENTS)
    assert targets[0, 9] == -100 and targets[0, 8] == 8 and targets[0, 10] == 10
    assert targets[1, 4] == -100 and targets[1, 16] == -100


def test_packed_sequences_mark_documents_from_the_token_file(tmp_path):
    # stream: BOS doc EOS BOS doc EOS ...; documents of 8, 13 and 30 own tokens
    lengths, tokens, bounds, pos = [8, 13, 30], [], [], 0
    for n in lengths:
        tokens += [1] + [5] * n + [2]
        bounds.append((pos + 1, pos + 1 + n))
        pos += n + 2
    prefix = tmp_path / "train"
    np.asarray(tokens, dtype=np.uint16).tofile(prefix.with_suffix(".bin"))
    np.save(prefix.with_suffix(".idx.npy"), np.asarray(bounds, dtype=np.int64))
    write_json(prefix.with_suffix(".json"), {"dtype": "uint16", "documents": 3, "tokens": sum(lengths),
                                              "document_ids": ["a", "b", "c"]})
    data = PackedSequences.from_token_file(TokenFile.open(prefix), seq_len=16, seed=0)
    for k in range(data.n):
        batch = data.packed(k, 1)
        ids, seg = batch.input_ids[0], batch.segments[0]
        starts = (seg[1:] != seg[:-1]).nonzero().flatten() + 1
        bos = (ids[1:] == 1).nonzero().flatten() + 1
        assert seg[0] == 0 and torch.equal(starts, bos)  # a new segment begins exactly at each BOS


def test_backend_choice():
    assert attn.resolve_backend("auto", torch.device("cpu"), document_masking=True) == "sdpa"
    if not attn.flash_attn_installed():
        assert attn.resolve_backend("auto", torch.device("cuda"), document_masking=True) == "flex_attention"
        assert attn.resolve_backend("auto", torch.device("cuda"), document_masking=False) == "sdpa"
        with pytest.raises(attn.AttentionError, match="finetune.attention.*flash-attn"):
            attn.resolve_backend("flash_attention_2", torch.device("cuda"), document_masking=False)
    with pytest.raises(attn.AttentionError, match="finetune.sdpa_backends"):
        with attn.sdpa_kernel_context(["fastest"]):
            pass
