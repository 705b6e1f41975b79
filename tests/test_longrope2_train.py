"""LongRoPE2's mixed context window training (Shang et al. 2025, section 3.3): short windows train with
the original RoPE and never attend across documents, long windows with the rescaled RoPE; the
fine-tuned model switches by length at inference (KV cache recomputed at the switch); a killed run
resumes to the same weights."""

import contextlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longctx.artifacts import write_json
from longctx.data import TokenFile
from longctx.rope import RopeGeometry, apply_to_model, cos_sin, switch_lengths, with_original_rope_below
from longctx.train import LossModule, MixedSequences, TrainSettings, mixed, train

from conftest import tiny_llama, write_token_files

L, S = 16, 4.0  # original context, scale: windows of 64 tokens
LONG = [1.0, 1.2, 1.6, 2.2, 3.0, 4.0, 4.6, 5.0]


def corpus(tmp_path, name="train", seed=0):
    """Short documents (3-14 tokens: at most 16 with BOS and EOS) and long ones (40-150 tokens)."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(3, 15)) if k % 3 else int(rng.integers(40, 150)) for k in range(90)]
    docs = [rng.integers(3, 96, n) for n in sizes]
    write_token_files(tmp_path / name, docs)
    return tmp_path / name


def sharp_llama():
    """A tiny random model whose attention depends on positions enough to tell RoPEs apart (its
    queries, keys and head scaled up, so a RoPE mistake moves the loss by far more than rounding)."""
    model = tiny_llama(context=L)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= 6
            layer.self_attn.k_proj.weight *= 6
        model.lm_head.weight *= 4
    return model


def mixed_model(short_mscale=1.0):
    """A tiny model with LongRoPE2's RoPE: the original up to L tokens, factors ``LONG`` beyond."""
    model = sharp_llama()
    g = RopeGeometry(16, 10000.0, L)
    apply_to_model(model, "longrope", S, with_original_rope_below(S, {"factors": LONG}, g, short_mscale))
    return model


def test_mixed_windows_are_short_or_long_by_micro_batch_in_the_set_fraction(tmp_path):
    data = TokenFile.open(corpus(tmp_path))
    seqs = MixedSequences.from_token_files(data, None, 64, seed=3, short_max_length=L, short_fraction=0.3, group=2)
    flags = [seqs.is_short(k) for k in range(200)]
    assert sum(flags) == 60 and all(flags[k] == flags[k + 1] for k in range(0, 200, 2))  # 30%, whole micro-batches
    for position in range(0, 40, 2):
        batch = seqs.packed(position, 2)
        assert batch.input_ids.shape == (2, 64) and batch.short.tolist() == flags[position : position + 2]
        for ids, segments, short in zip(batch.input_ids, batch.segments, batch.short):
            sizes = torch.bincount(segments).tolist()
            if short:  # whole short documents or their pieces, each at most L tokens
                assert max(sizes) <= L
            else:  # pieces of long documents only (a row's first and last may be cut short)
                assert all(n > L for n in sizes[1:-1])
    again = MixedSequences.from_token_files(data, None, 64, seed=3, short_max_length=L, short_fraction=0.3, group=2)
    assert torch.equal(again.packed(10, 2).input_ids, seqs.packed(10, 2).input_ids)  # seeded: a resume reads the same


def packed_rows(seqs, short: bool, count=2):
    k = next(k for k in range(0, 100, 2) if seqs.is_short(k) == short)
    return seqs.packed(k, count)


def test_short_windows_use_the_original_rope_within_documents_and_long_windows_the_rescaled_rope(tmp_path):
    data = TokenFile.open(corpus(tmp_path))
    seqs = MixedSequences.from_token_files(data, None, 64, seed=1, short_max_length=L, short_fraction=0.5, group=2)
    model = mixed_model()
    rotaries = mixed.rotaries_at(model, {"short": L, "long": 64}, "cpu")
    loss = LossModule(model, chunk_size=7, backend="sdpa", rotaries=rotaries)
    original = sharp_llama()  # the same weights, never extended: the original RoPE
    rescaled = sharp_llama()
    apply_to_model(rescaled, "longrope", S, {"factors": LONG})

    short = packed_rows(seqs, True)
    _, logged = loss(short.input_ids, short.segments, short=short.short)
    total, count = 0.0, 0
    for ids, segments in zip(short.input_ids, short.segments):
        for seg in segments.unique():  # every document alone, with the original RoPE
            doc = ids[segments == seg][None]
            with torch.no_grad():
                logits = original(doc).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, doc[0, 1:], reduction="sum"))
            count += doc.shape[1] - 1
    assert float(logged) == pytest.approx(total / count, rel=1e-5)
    # the same rows with the rescaled RoPE (or across documents) score otherwise: the check can fail
    with torch.no_grad():
        _, as_long = loss(short.input_ids, short.segments, short=torch.zeros(2, dtype=torch.bool))
    assert abs(float(as_long) - float(logged)) > 1e-2

    long = packed_rows(seqs, False)
    _, logged = loss(long.input_ids, long.segments, short=long.short)
    with torch.no_grad():
        logits = rescaled(long.input_ids).logits[:, :-1]  # full attention over the window, rescaled RoPE
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 96), long.input_ids[:, 1:].reshape(-1))
    assert float(logged) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(Exception, match="mixes short and long"):
        loss(long.input_ids, long.segments, short=torch.tensor([True, False]))


def settings(**kw):
    base = dict(seq_len=64, steps=6, batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=1, checkpoint_every=0,
                log_every=1, mixed_context={"enabled": True, "short_fraction": 0.5})
    return TrainSettings(**{**base, **kw})


@contextlib.contextmanager
def rotaries_seen(seen: list):
    """Inside, every micro-batch's (short flag, rotary used, segment lengths) is recorded."""
    real = mixed.rotary_as
    import longctx.train.loss as loss_module

    @contextlib.contextmanager
    def spy(model, rotary):
        seen.append(rotary)
        with real(model, rotary):
            yield

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loss_module, "rotary_as", spy)
        yield


def test_the_mixed_trainer_rotates_short_windows_with_the_short_set_only(tmp_path):
    seen = []
    data = corpus(tmp_path)
    with rotaries_seen(seen):
        train(mixed_model(), data, settings(steps=3), tmp_path / "out", tmp_path / "work")
    seqs = MixedSequences.from_token_files(TokenFile.open(data), None, 64, 1234, L, 0.5, 2)
    flags = [seqs.is_short(k) for k in range(0, 12, 2)]  # the six micro-batches, in order
    assert len(seen) == 6 and len({id(r) for r in seen}) == 2 and True in flags and False in flags
    short_rotary = seen[flags.index(True)]
    assert all((r is short_rotary) == f for r, f in zip(seen, flags))
    # the short rotary is the original RoPE (factors 1, cos/sin unscaled); the long one the factors' RoPE
    pos = torch.arange(64)[None]
    original = cos_sin({"rope_type": "default", "rope_theta": 10000.0}, 16, pos)
    for got, want in zip(short_rotary(torch.zeros(1), pos), original):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    long_rotary = next(r for r in seen if r is not short_rotary)
    assert not torch.allclose(long_rotary(torch.zeros(1), pos)[0], original[0])


def test_a_killed_mixed_run_resumes_to_the_same_weights(tmp_path):
    import longctx.train.loop as loop

    data = corpus(tmp_path)
    s = settings(checkpoint_every=2)
    train(mixed_model(), data, s, tmp_path / "straight", tmp_path / "work_a")
    real_save = loop._save_checkpoint

    def save_then_die(trainer, ckpt, at, position, fingerprint):
        real_save(trainer, ckpt, at, position, fingerprint)
        if at == 4:
            raise KeyboardInterrupt("killed")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(loop, "_save_checkpoint", save_then_die)
        train(mixed_model(), data, s, tmp_path / "resumed", tmp_path / "work_b")
    train(mixed_model(), data, s, tmp_path / "resumed", tmp_path / "work_b")
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the mixed windows matter: without them the same run ends elsewhere
    train(mixed_model(), data, settings(checkpoint_every=2, mixed_context={"enabled": False}), tmp_path / "plain",
          tmp_path / "work_c")
    c = load_file(tmp_path / "plain" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- the fine-tuned model, through the jobs ---------------------------------------------------------


def test_a_mixed_finetune_job_saves_the_length_switch_and_generation_crosses_it_exactly(tmp_path, austen_tokenizer):
    from longctx import config as lc
    from longctx import jobs
    from longctx.data import load_tokenizer
    from longctx.evaluate.generation import greedy_generate

    tiny_llama(vocab_size=512, context=L).save_pretrained(tmp_path / "base")
    load_tokenizer(austen_tokenizer).save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(4)
    write_token_files(tmp_path / "train", [rng.integers(3, 512, 100) for _ in range(8)])
    write_token_files(tmp_path / "short", [rng.integers(3, 512, 10) for _ in range(60)])  # a short-window corpus
    factors = tmp_path / "factors.json"
    write_json(factors, {"factors": LONG, "n_hat": 0, "rope_params": {"factors": LONG, "n_hat": 0}})
    variant = lc.Variant("lr2-x4-ft", "longrope", S, {}, finetune=True, search=True, finetune_settings={
        "mixed_context": {"enabled": True, "short_fraction": 0.5}})
    cfg = lc.load_config("config.yaml")
    ft = {**{k: v for k, v in cfg["finetune"].items() if k != "corpus"}, "steps": 2, "batch_size": 2,
          "micro_batch_size": 1, "warmup_steps": 0, "log_every": 1}
    run = lc.RunInfo(experiment="t", model_source="pretrain", model="pretrain", original_context=L, seed=0)
    jobs.finetune(model=tmp_path / "base", data=tmp_path / "train", out=tmp_path / "ft", variant=variant,
                  settings=ft, run=run, device="cpu", factors=factors, work_dir=tmp_path / "work",
                  short_data=tmp_path / "short")
    # what the evaluate job loads: the folder as saved, with its switch at L
    model = jobs.extended_model(tmp_path / "ft", variant, factors, as_saved=True)
    sets = model.config.rope_parameters["factor_sets"]
    assert [(s["max_length"], s["factors"], s.get("mscale")) for s in sets] == [(L, [1.0] * 8, 1.0), (None, LONG, None)]
    assert switch_lengths(model.config) == [L]
    # greedy generation with the KV cache across the switch equals recomputing every step from scratch
    prompt = torch.tensor([rng.integers(3, 512, 12).tolist()])
    cached = greedy_generate(model, prompt, 10)
    seq = prompt
    for _ in range(10):
        with torch.no_grad():
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert cached.tolist() == seq[:, 12:].tolist()
