"""The trainer: loss falls, a killed run resumes to the same weights, divergence stops cleanly."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import longctx.train.loop as train_mod
import longctx.train.loss as train_loss
from longctx.artifacts import write_json
from longctx.train import TrainSettings, TrainingError, train

from conftest import tiny_llama


def token_file(tmp_path, n=6000, vocab=96, seed=0):
    """A token stream with structure to learn: a repeating pattern with noise."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(3, vocab, size=17)
    tokens = np.tile(pattern, n // 17 + 1)[:n].astype(np.uint16)
    noise = rng.random(n) < 0.1
    tokens[noise] = rng.integers(3, vocab, size=noise.sum())
    prefix = tmp_path / "train"
    tokens.tofile(prefix.with_suffix(".bin"))
    np.save(prefix.with_suffix(".idx.npy"), np.array([[0, n]], dtype=np.int64))
    write_json(prefix.with_suffix(".json"), {"dtype": "uint16", "documents": 1, "tokens": n, "document_ids": ["x"]})
    return prefix


@contextlib.contextmanager
def killed_after_checkpoint(step: int):
    """Inside, the trainer dies right after saving the checkpoint of ``step``, as a killed job would."""
    real_save = train_mod._save_checkpoint

    def save_then_die(accelerator, ckpt, at, position, settings):
        real_save(accelerator, ckpt, at, position, settings)
        if at == step:
            raise KeyboardInterrupt("killed")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(train_mod, "_save_checkpoint", save_then_die)
        yield


def settings(**kw):
    base = dict(seq_len=32, steps=30, batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=2,
                checkpoint_every=0, log_every=5)
    return TrainSettings(**{**base, **kw})


def losses(work):
    import json

    return [json.loads(line)["loss"] for line in (work / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_model_is_saved_as_safetensors(tmp_path):
    data = token_file(tmp_path)
    summary = train(tiny_llama(), data, settings(), tmp_path / "out", tmp_path / "work")
    curve = losses(tmp_path / "work")
    assert curve[-1] < 0.6 * curve[0]
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert summary["steps"] == 30 and "causal attention at half" in summary["flop_convention"]


def test_a_bf16_model_trained_with_float32_master_weights_is_saved_and_reloads_as_bf16(tmp_path):
    from longctx.models import load_model

    data = token_file(tmp_path)
    train(tiny_llama().to(torch.bfloat16), data, settings(steps=2, precision="fp32"), tmp_path / "out",
          tmp_path / "work")
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.bfloat16}
    # what a later stage gets with dtype "auto": bf16, not the float32 training copy
    assert load_model(tmp_path / "out").dtype == torch.bfloat16


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    data = token_file(tmp_path)
    s = settings(steps=8, checkpoint_every=3)
    train(tiny_llama(), data, s, tmp_path / "straight", tmp_path / "work_a")

    with killed_after_checkpoint(6):
        train(tiny_llama(), data, s, tmp_path / "resumed", tmp_path / "work_b")
    assert not (tmp_path / "resumed").exists()  # no half-written final model
    train(tiny_llama(), data, s, tmp_path / "resumed", tmp_path / "work_b")

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_divergence_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    data = token_file(tmp_path)
    real_nll, calls = train_loss.causal_lm_nll, {"n": 0}

    def nll_turning_nan(*args, **kwargs):  # the loss becomes NaN at the 5th step (2 micro-batches/step)
        calls["n"] += 1
        nll, count = real_nll(*args, **kwargs)
        return (nll * float("nan") if calls["n"] > 8 else nll), count

    monkeypatch.setattr(train_loss, "causal_lm_nll", nll_turning_nan)
    with pytest.raises(TrainingError, match="diverged.*last good checkpoint"):
        train(tiny_llama(), data, settings(steps=20, checkpoint_every=2), tmp_path / "out", tmp_path / "w")
    assert not (tmp_path / "out").exists()
    import json

    assert json.loads((tmp_path / "w" / "checkpoint" / "progress.json").read_text())["step"] == 4


def test_too_little_data_is_a_clear_error(tmp_path):
    data = token_file(tmp_path, n=20)
    with pytest.raises(Exception, match="fewer than one sequence of 32"):
        train(tiny_llama(), data, settings(), tmp_path / "out", tmp_path / "w")


def test_a_huge_learning_rate_stops_before_any_non_finite_weights_are_saved(tmp_path):
    data = token_file(tmp_path)
    s = settings(steps=30, checkpoint_every=1, lr=1e5, warmup_steps=0, grad_clip=0)
    with pytest.raises(TrainingError, match=r"diverged at step \d+: the (gradient norm|loss) is nan.*kept"):
        train(tiny_llama(), data, s, tmp_path / "out", tmp_path / "w")
    assert not (tmp_path / "out").exists()
    kept = list((tmp_path / "w").rglob("*.safetensors"))
    assert kept, "the checkpoint of the last good step stays"
    for f in kept:
        for name, t in load_file(f).items():
            assert torch.isfinite(t.float()).all(), (f.name, name)


class Payload:
    """Unpickling this touches a file: what a planted checkpoint file would do to a job that loads it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_the_checkpoint_is_never_executed_and_the_resume_still_works(tmp_path):
    import pickle

    data = token_file(tmp_path)
    s = settings(steps=8, checkpoint_every=3)
    train(tiny_llama(), data, s, tmp_path / "straight", tmp_path / "work_a")
    with killed_after_checkpoint(6):
        train(tiny_llama(), data, s, tmp_path / "resumed", tmp_path / "work_b")
    ckpt = tmp_path / "work_b" / "checkpoint"
    marker = tmp_path / "pwned"
    for name in ("state/custom_checkpoint_0.pkl", "state/random_states_0.pkl", "state/optimizer.bin",
                 "state/scheduler.bin", "custom_checkpoint_0.pkl", "optimizer.bin"):
        (ckpt / name).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / name).write_bytes(pickle.dumps(Payload(marker)))
    train(tiny_llama(), data, s, tmp_path / "resumed", tmp_path / "work_b")
    assert not marker.exists()
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_in_accelerates_pickled_format_is_set_aside_not_loaded(tmp_path):
    import pickle

    data = token_file(tmp_path)
    ckpt = tmp_path / "w" / "checkpoint"
    (ckpt / "state").mkdir(parents=True)
    write_json(ckpt / "progress.json", {"step": 3, "position": 12, "settings": {}})
    marker = tmp_path / "pwned"
    (ckpt / "state" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    summary = train(tiny_llama(), data, settings(steps=4), tmp_path / "out", tmp_path / "w")
    assert summary["steps"] == 4 and not marker.exists()
    assert list((tmp_path / "w").glob("checkpoint.set-aside-*"))


def test_finetune_length_trains_at_its_own_length_whatever_the_scale(tmp_path, austen_tokenizer):
    """Giraffe trains every scale at 4096 tokens: ``finetune.length`` sets the training length; the
    variant keeps its scale (its RoPE), so a x4 model of L = 16 trains at 24 tokens, not 64."""
    import json

    from conftest import write_token_files
    from longctx import config as lc
    from longctx import jobs
    from longctx.data import load_tokenizer

    tiny_llama(vocab_size=512, context=16).save_pretrained(tmp_path / "base")
    load_tokenizer(austen_tokenizer).save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    write_token_files(tmp_path / "train", [rng.integers(3, 512, 200) for _ in range(4)])
    cfg = lc.load_config("config.yaml")
    ft = {**{k: v for k, v in cfg["finetune"].items() if k != "corpus"}, "steps": 1, "batch_size": 1,
          "micro_batch_size": 1, "warmup_steps": 0, "log_every": 1, "length": 24}
    run = lc.RunInfo(experiment="t", model_source="pretrain", model="pretrain", original_context=16, seed=0)
    variant = lc.Variant("pi-x4-ft", "pi", 4.0, {}, finetune=True, search=False)
    jobs.finetune(model=tmp_path / "base", data=tmp_path / "train", out=tmp_path / "ft", variant=variant,
                  settings=ft, run=run, device="cpu", work_dir=tmp_path / "work")
    assert json.loads((tmp_path / "work" / "summary.json").read_text())["settings"]["seq_len"] == 24
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["rope_parameters"]["factor"] == 4.0


def test_warmup_from_zero_is_the_hugging_face_trainers_schedule_giraffe_trained_with():
    """Giraffe trains with Hugging Face's Trainer: linear warm-up from 0 (its first step at learning
    rate 0), then linear decay to 0. ``warmup_from: 0`` gives that schedule; the default starts at
    10% of the learning rate (PI)."""
    from transformers import get_linear_schedule_with_warmup

    from longctx.train.trainer import lr_lambda

    steps, warmup = 1000, 300
    reference = get_linear_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), warmup, steps)
    ours = lr_lambda(TrainSettings.from_config({"steps": steps, "warmup_steps": warmup, "warmup_from": 0.0,
                                                "schedule": "linear"}, seq_len=32, seed=0))
    for step in (0, 1, 150, 299, 300, 301, 650, 999, 1000):
        assert ours(step) == pytest.approx(reference.lr_lambdas[0](step), abs=1e-12)
    pi = lr_lambda(settings(warmup_steps=20))
    assert pi(0) == pytest.approx(0.1) and pi(20) == 1.0


def supervised_examples(n=6, vocab=96, seed=1):
    """(prompt, response) examples: random prompts of varied length, the same 4-token response."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(3, vocab, size=int(rng.integers(5, 20))).tolist()
        response = [5, 6, 7, 8]
        out.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response})
    return out


def test_a_supervised_batch_is_scored_on_its_labelled_tokens_only():
    from longctx.models.loss import causal_lm_nll
    from longctx.train.supervised import ExampleSequences

    model = tiny_llama()
    batch = ExampleSequences(supervised_examples(), seed=0).packed(0, 2)
    assert batch.input_ids.shape == batch.labels.shape and (batch.labels != -100).sum() == 8
    loss, _ = train_loss.LossModule(model, chunk_size=16, backend="sdpa")(batch.input_ids, batch.segments,
                                                                          labels=batch.labels)
    nll, count = causal_lm_nll(model, batch.input_ids, labels=batch.labels)
    assert count == 8 and torch.allclose(loss, nll / count)  # the prompts and the padding are not scored


def test_supervised_examples_resume_from_their_checkpoint_and_only_theirs(tmp_path):
    examples = supervised_examples()
    s = settings(steps=8, checkpoint_every=3)
    train(tiny_llama(), None, s, tmp_path / "straight", tmp_path / "work_a", examples=examples)
    assert losses(tmp_path / "work_a")[-1] < losses(tmp_path / "work_a")[0]

    with killed_after_checkpoint(6):
        train(tiny_llama(), None, s, tmp_path / "resumed", tmp_path / "work_b", examples=examples)
    train(tiny_llama(), None, s, tmp_path / "resumed", tmp_path / "work_b", examples=examples)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # other examples: the checkpoint (a fingerprint of the examples) is set aside, the run starts over
    with killed_after_checkpoint(6):
        train(tiny_llama(), None, s, tmp_path / "other", tmp_path / "work_c", examples=examples)
    train(tiny_llama(), None, s, tmp_path / "other", tmp_path / "work_c", examples=supervised_examples(seed=2))
    assert [p.name for p in (tmp_path / "work_c").glob("checkpoint.set-aside-*")]


def test_cosine_schedule_ends_at_min_lr_ratio_which_defaults_to_longrope2s_released_zero():
    from longctx.config import finetune_settings_for, load_config, variants
    from longctx.train.trainer import lr_lambda

    def end(**kw):
        f = lr_lambda(TrainSettings(seq_len=16, steps=100, warmup_steps=10, schedule="cosine", **kw))
        return f(10), f(55), f(100)

    # LongRoPE2's released trainer (nnscaler's WarmupCosineAnnealingLR, eta_min 0) ends at 0
    assert end() == pytest.approx((1.0, 0.5, 0.0))
    assert end(min_lr_ratio=0.1) == pytest.approx((1.0, 0.55, 0.1))
    config = load_config(Path(__file__).resolve().parents[1] / "config/paper/longrope2.yaml")
    ft = next(v for v in variants(config) if v.finetune)
    settings = TrainSettings.from_config(finetune_settings_for(config, ft), seq_len=16, seed=0)
    assert (settings.schedule, settings.min_lr_ratio) == ("cosine", 0.0)
    with pytest.raises(TrainingError, match="finetune.min_lr_ratio"):
        train_mod.check_settings(TrainSettings(seq_len=16, steps=10, min_lr_ratio=1.5))
