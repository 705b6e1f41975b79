"""LoRA and full fine-tuning write checkpoints later stages load; resume stays exact; errors say what to do."""

import json

import pytest
import torch
from safetensors.torch import load_file

import longctx.train.loss as train_loss
import longctx.train.settings as train_settings
from longctx.models import load_model
from longctx.train import TrainSettings, TrainingError, train

from conftest import tiny_llama
from test_train import killed_after_checkpoint, token_file

@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """One process trains several times here; let each run choose its own mixed precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


LORA = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def settings(**kw):
    base = dict(seq_len=32, steps=6, batch_size=2, micro_batch_size=1, lr=3e-3, warmup_steps=1,
                checkpoint_every=0, log_every=2)
    return TrainSettings(**{**base, **kw})


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_lora_writes_merged_weights_and_a_loadable_adapter(tmp_path):
    from peft import PeftModel

    data = token_file(tmp_path)
    summary = train(tiny_llama(), data, settings(lora=LORA), tmp_path / "out", tmp_path / "work", device="cpu",
                    base_model_path="base-model-folder")
    assert summary["trainable_parameters"] == 2 * 2 * 4 * (64 + 64) - 2 * 4 * 32  # q: 64x64, v: 64x32, rank 4
    merged = load_model(tmp_path / "out")  # what evaluation loads: a plain folder
    base, trained = tiny_llama().state_dict(), merged.state_dict()
    q, k, up = (f"model.layers.{i}.{m}.weight" for i, m in ((0, "self_attn.q_proj"), (1, "self_attn.k_proj"),
                                                              (0, "mlp.up_proj")))
    assert not torch.equal(base[q], trained[q])  # adapted
    assert torch.equal(base[k], trained[k]) and torch.equal(base[up], trained[up])  # not targeted

    adapter_dir = tmp_path / "out" / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base-model-folder" and config["r"] == 4
    with_adapter = PeftModel.from_pretrained(tiny_llama(), adapter_dir)
    ids = torch.randint(3, 96, (1, 32), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(with_adapter, ids), logits(merged, ids), rtol=1e-5, atol=1e-5)


def test_full_fine_tuning_saves_the_weights_it_trained(tmp_path):
    data = token_file(tmp_path)
    model = tiny_llama()
    summary = train(model, data, settings(), tmp_path / "out", tmp_path / "work", device="cpu")
    assert summary["saved"] == "full weights" and summary["attention"] == "sdpa"
    saved = load_model(tmp_path / "out")
    for name, value in model.state_dict().items():
        assert torch.equal(saved.state_dict()[name], value), name
    assert not torch.equal(saved.state_dict()["model.norm.weight"], tiny_llama().state_dict()["model.norm.weight"])
    lines = (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["attention"] == "sdpa"


def test_killed_lora_run_with_document_masking_resumes_to_the_same_weights(tmp_path):
    data = token_file(tmp_path)
    s = settings(steps=5, checkpoint_every=2, lora=LORA, document_masking=True)
    train(tiny_llama(), data, s, tmp_path / "straight", tmp_path / "work_a", device="cpu")

    with killed_after_checkpoint(4):
        train(tiny_llama(), data, s, tmp_path / "resumed", tmp_path / "work_b", device="cpu")
    train(tiny_llama(), data, s, tmp_path / "resumed", tmp_path / "work_b", device="cpu")
    for f in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(tmp_path / "straight" / f), load_file(tmp_path / "resumed" / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)


def test_bf16_mixed_precision_trains_and_saves_in_the_models_dtype(tmp_path):
    data = token_file(tmp_path)
    summary = train(tiny_llama(), data, settings(steps=3, precision="bf16"), tmp_path / "out", tmp_path / "w",
                    device="cpu")
    assert summary["precision"] == "bf16" and summary["final_loss"] < 10
    assert {v.dtype for v in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}


def test_out_of_memory_names_the_knobs(tmp_path, monkeypatch):
    data = token_file(tmp_path)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train_loss, "causal_lm_nll", no_memory)
    with pytest.raises(TrainingError) as err:
        train(tiny_llama(), data, settings(), tmp_path / "out", tmp_path / "w", device="cpu")
    for knob in ("micro_batch_size", "gradient_checkpointing", "strategy", "sequence_parallel", "cpu_offload"):
        assert knob in str(err.value)
    assert "32 tokens" in str(err.value)


def test_settings_come_from_the_validated_config():
    from pathlib import Path

    from longctx.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml")
    s = TrainSettings.from_config(cfg["finetune"], seq_len=512, seed=1)
    assert s.betas == (0.9, 0.95) and s.strategy == "ddp" and s.lora.enabled is False
    assert s.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    with pytest.raises(TrainingError, match="finetune.cpu_offload"):
        train_settings.check_settings(TrainSettings(seq_len=8, steps=1, cpu_offload=True))
