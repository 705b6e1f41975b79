"""Sliding-window attention (Mistral) is widened to each stage's length (``model.sliding_window``)."""

import json

import numpy as np
import pytest
import torch

from longctx import config as lc
from longctx import jobs
from longctx.models import widen_sliding_window
from longctx.models.window import WindowError

N, BACK = 48, 40  # the token that changes sits 40 positions before the last


def tiny_mistral(window: int = 16, context: int = 16):
    """Two layers with a 16-token window: the last position reaches at most 2 * 15 tokens back."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                        sliding_window=window, bos_token_id=1, eos_token_id=2)
    return MistralForCausalLM(cfg).eval()


def last_logits_change(model) -> bool:
    ids = torch.arange(3, 3 + N)[None]
    other = ids.clone()
    other[0, N - 1 - BACK] = 500
    with torch.no_grad():
        a, b = model(ids).logits[0, -1], model(other).logits[0, -1]
    return not torch.allclose(a, b)


def save_base(tmp_path, austen_tokenizer):
    from longctx.data import load_tokenizer

    tiny_mistral().save_pretrained(tmp_path / "base")
    load_tokenizer(austen_tokenizer).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


RUN = dict(experiment="t", model_source="local", model="tiny-mistral", original_context=16, seed=0)
PI = lc.Variant("pi-x4", "pi", 4.0, {}, finetune=False, search=False)


def test_an_extended_mistral_attends_beyond_its_shipped_window(tmp_path, austen_tokenizer):
    base = save_base(tmp_path, austen_tokenizer)
    shipped = jobs.extended_model(base, PI)  # no length: as shipped, 16 tokens
    assert not last_logits_change(shipped)  # control: 40 tokens back is out of reach
    widened = jobs.extended_model(base, PI, length=N, sliding_window="widen")
    assert widened.config.sliding_window == N
    assert last_logits_change(widened)


def test_keep_leaves_the_window_and_an_integer_sets_it(tmp_path, austen_tokenizer):
    base = save_base(tmp_path, austen_tokenizer)
    kept = jobs.extended_model(base, PI, length=N, sliding_window="keep")
    assert kept.config.sliding_window == 16 and not last_logits_change(kept)
    assert jobs.extended_model(base, PI, length=N, sliding_window=100).config.sliding_window == 100


def test_a_wider_window_is_not_narrowed_and_bad_settings_name_the_key():
    model = tiny_mistral(window=4096)
    assert widen_sliding_window(model, N, "widen") == 4096
    with pytest.raises(WindowError, match="model.sliding_window"):
        widen_sliding_window(model, N, "wide")


def test_qwen2_sliding_layers_are_widened_in_their_attention_modules_too():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    model = Qwen2ForCausalLM(cfg)
    widen_sliding_window(model, N, "widen")
    windows = [m.sliding_window for m in model.modules() if type(m).__name__ == "Qwen2Attention"]
    assert model.config.sliding_window == N and windows == [None, N]  # layer 0 is full attention


def test_the_fine_tuned_folder_records_the_window_it_trained_with(tmp_path, austen_tokenizer):
    from conftest import write_token_files

    base = save_base(tmp_path, austen_tokenizer)
    rng = np.random.default_rng(0)
    write_token_files(tmp_path / "train", [rng.integers(3, 512, 200) for _ in range(4)])
    cfg = lc.load_config("config.yaml")
    ft = {**{k: v for k, v in cfg["finetune"].items() if k != "corpus"}, "steps": 1, "batch_size": 1,
          "micro_batch_size": 1, "warmup_steps": 0, "log_every": 1, "length": 40}
    variant = lc.Variant("pi-x4-ft", "pi", 4.0, {}, finetune=True, search=False)
    jobs.finetune(model=base, data=tmp_path / "train", out=tmp_path / "ft", variant=variant, settings=ft,
                  run=lc.RunInfo(**RUN), device="cpu", work_dir=tmp_path / "work")
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["sliding_window"] == 40


def test_an_evaluation_job_widens_to_its_longest_prompt_plus_what_it_generates():
    plan = [{"evaluation": "perplexity", "lengths": [32, 64], "settings": {}},
            {"evaluation": "passkey", "lengths": [48], "settings": {"max_new_tokens": 10}},
            {"evaluation": "ruler", "lengths": [64], "settings": {"max_new_tokens": {"niah": 20, "vt": 5}}}]
    assert jobs._longest_sequence(plan) == 64 + 20
