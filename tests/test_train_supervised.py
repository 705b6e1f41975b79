"""Supervised fine-tunes: the loss mask of conversations, PI's GovReport fine-tune read by its
evaluation, Giraffe's instruction fine-tune evaluated as a variant of its own."""

import json
import math

import pytest

from longctx import jobs
from longctx.config import RunInfo, Variant, load_config, variants
from longctx.data import VICUNA_SYSTEM, load_tokenizer
from longctx.train.supervised import IGNORE, conversation_example, conversation_examples, turns_of

from conftest import REPO, tiny_llama

GOVREPORT = str(REPO / "tests" / "fixtures" / "govreport")
SHAREGPT = {"conversations": [{"from": "human", "value": "Who wrote Persuasion?"},
                              {"from": "gpt", "value": "Jane Austen wrote it."},
                              {"from": "human", "value": "When?"},
                              {"from": "gpt", "value": "In 1817."}]}
MESSAGES = {"messages": [{"role": "user", "content": "Who wrote Persuasion?"},
                         {"role": "assistant", "content": "Jane Austen wrote it."},
                         {"role": "user", "content": "When?"},
                         {"role": "assistant", "content": "In 1817."}]}


@pytest.fixture(scope="module")
def tokenizer(austen_tokenizer):
    return load_tokenizer(austen_tokenizer)


def trained_spans(example):
    """The runs of labelled tokens, as token lists."""
    spans, run = [], []
    for i, label in zip(example["input_ids"], example["labels"]):
        if label == IGNORE:
            if run:
                spans.append(run)
            run = []
        else:
            assert label == i
            run.append(i)
    return spans + ([run] if run else [])


def test_the_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    assert not getattr(tokenizer, "chat_template", None)  # so `auto` is Vicuna v1.1
    example = conversation_example(tokenizer, turns_of(SHAREGPT, "conversations"), max_length=1000)
    # both conversation formats give the same example
    assert example == conversation_example(tokenizer, turns_of(MESSAGES, "messages"), max_length=1000)
    text = tokenizer.decode(example["input_ids"], skip_special_tokens=False)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert text == (f"{bos}{VICUNA_SYSTEM} USER: Who wrote Persuasion? ASSISTANT: Jane Austen wrote it.{eos}"
                    f"USER: When? ASSISTANT: In 1817.{eos}")  # FastChat's vicuna_v1.1
    assert [tokenizer.decode(s) for s in trained_spans(example)] == [f"Jane Austen wrote it.{eos}", f"In 1817.{eos}"]
    # a cut conversation keeps its mask; one with no assistant token left is dropped
    cut = conversation_example(tokenizer, turns_of(SHAREGPT, "conversations"), max_length=40)
    assert cut["labels"] == example["labels"][:40]
    assert len(conversation_examples(tokenizer, [SHAREGPT], "conversations", max_length=1000)) == 1
    with pytest.raises(ValueError, match="no conversation has an assistant token within 5 tokens"):
        conversation_examples(tokenizer, [SHAREGPT], "conversations", max_length=5)


def saved_tiny_model(folder, tokenizer, context=64):
    tiny_llama(vocab_size=len(tokenizer), context=context).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_settings(**over):
    cfg = load_config(REPO / "config.yaml")
    section = {k: v for k, v in cfg["finetune"].items() if k not in ("corpus", "length", "steps")}
    return {**section, "batch_size": 2, "micro_batch_size": 1, "warmup_steps": 0, "log_every": 1,
            "length": None, **over}


RUN = RunInfo("t", "local", "tiny", 64, 1)


def test_govreport_finetune_stage_is_what_its_evaluation_reads(tmp_path, tokenizer):
    model = saved_tiny_model(tmp_path / "pi-x4", tokenizer)
    variant = Variant("pi-x4", "pi", 4.0, {}, finetune=False, search=False)
    dataset = {"path": GOVREPORT, "name": "document", "split": "train", "revision": None, "max_examples": None,
               "text_field": "report", "summary_field": "summary", "max_document_tokens": 150}
    tuned = tmp_path / "task_models" / "govreport" / "pi-x4"
    jobs.task_finetune(task="govreport", model=model, out=tuned, variant=variant, dataset=dataset, run=RUN,
                       settings=train_settings(epochs=3, lr=1e-3), device="cpu", work_dir=tmp_path / "work")
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["steps"] == math.ceil(2 * 3 / 2)  # 2 training reports, 3 epochs, 2 a step
    assert summary["settings"]["seq_len"] == 256  # the variant's target length, 4 x 64
    assert (tuned / "model.safetensors").exists() and (tuned / "tokenizer.json").exists()

    settings = {"hub_path": GOVREPORT, "max_new_tokens": 8, "max_document_tokens": 150, "batch_size": 2}
    out = tmp_path / "eval" / "govreport-256.json"
    common = {"evaluation": "govreport", "model": model, "variant": variant, "lengths": [256], "outs": [out],
              "settings": settings, "run": RUN, "device": "cpu"}
    jobs.evaluate(**common, task_model=tuned)
    tuned_result = json.loads(out.read_text())
    assert tuned_result["rope"] == "linear" and tuned_result["variant"] == "pi-x4"
    # a rerun keeps the result made from the same weights
    mtime = out.stat().st_mtime_ns
    jobs.evaluate(**common, task_model=tuned)
    assert out.stat().st_mtime_ns == mtime
    # the zero-shot evaluation (the variant's own weights) is another result
    zero_shot = tmp_path / "eval" / "zero-shot.json"
    jobs.evaluate(**{**common, "outs": [zero_shot]})
    assert json.loads(zero_shot.read_text())["fingerprint"] != tuned_result["fingerprint"]


def test_instruction_tuned_variant_is_trained_and_evaluated_as_its_own(tmp_path, tokenizer):
    config = load_config(REPO / "config.yaml", {"instruct": {"variants": ["pi-x4"],
                                                             "dataset": {"path": "chats.jsonl"}}})
    ift = {v.name: v for v in variants(config)}["pi-x4-ift"]
    assert (ift.method, ift.scale, ift.instruct_of, ift.finetune) == ("pi", 4.0, "pi-x4", False)

    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(json.dumps(SHAREGPT) for _ in range(3)) + "\n")
    source = Variant("pi-x4", "pi", 4.0, {}, finetune=False, search=False)
    model = saved_tiny_model(tmp_path / "base", tokenizer)
    dataset = {**config["instruct"]["dataset"], "path": str(chats)}
    settings = train_settings(epochs=1, lr=1e-3, lora={**config["finetune"]["lora"], "enabled": True, "r": 4})
    folder = tmp_path / "models" / "pi-x4-ift"
    jobs.task_finetune(task="instruct", model=model, out=folder, variant=source, dataset=dataset, run=RUN,
                       settings=settings, device="cpu", work_dir=tmp_path / "work")
    assert (folder / "adapter").is_dir()  # LoRA, merged into the folder's weights
    out = tmp_path / "eval" / "lines-512.json"
    jobs.evaluate(evaluation="lines", model=folder, variant=ift, lengths=[512], outs=[out], run=RUN, device="cpu",
                  settings={"examples": 1, "max_new_tokens": 4})
    result = json.loads(out.read_text())
    assert result["variant"] == "pi-x4-ift" and result["rope"] == "linear"


def test_task_finetune_config_errors_name_the_key():
    from longctx.config import ConfigError

    with pytest.raises(ConfigError, match=r"instruct\.dataset\.path"):
        load_config(REPO / "config.yaml", {"instruct": {"variants": ["pi-x4"]}})
    with pytest.raises(ConfigError, match=r"evaluate\.govreport\.finetune\.variants': no variant named 'pi-x9'"):
        load_config(REPO / "config.yaml", {"evaluate": {"govreport": {"finetune": {"variants": ["pi-x9"]}}}})
    # the embedded default's micro_batch_size (8) does not divide a task's batch of 2
    with pytest.raises(ConfigError, match=r"instruct\.batch_size': 2 \(for pi-x4\) is not a multiple"):
        load_config(REPO / "config.yaml", {"instruct": {"variants": ["pi-x4"], "dataset": {"path": "c.jsonl"},
                                                        "batch_size": 2}})
