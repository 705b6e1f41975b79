"""GovReport: prompt-masked fine-tuning data, ROUGE scoring, the loader on a local copy, end to end."""

import pytest

from longctx.data import load_tokenizer
from longctx.evaluate import EVALUATIONS
from longctx.evaluate.govreport import (IGNORE, TEMPLATE, collate_summaries, encode_example, finetune_examples,
                                        load_rows, prompt_ids, rouge)
from longctx.models.loss import causal_lm_nll

from conftest import REPO, tiny_llama

COPY = str(REPO / "tests" / "fixtures" / "govreport")


@pytest.fixture(scope="module")
def tokenizer(austen_tokenizer):
    return load_tokenizer(austen_tokenizer)


def test_rouge_on_hand_made_summaries():
    ref = "the agency should create a central inventory of vehicles"
    assert rouge([ref], [ref]) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    assert rouge(["completely unrelated words here"], [ref]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    half = rouge(["the agency should create"], [ref])
    assert 0 < half["rouge2"] < half["rouge1"] < 100
    assert half["rouge1"] == pytest.approx(100 * 2 * (4 / 4) * (4 / 9) / (1 + 4 / 9))  # F1 of P=1, R=4/9


def test_prompt_is_the_template_with_the_document_cut(tokenizer):
    doc = "The agency reviewed the fleet. " * 200
    full = prompt_ids(tokenizer, doc, 10**6)
    assert tokenizer.decode(full) == TEMPLATE.format(document=doc)
    cut = prompt_ids(tokenizer, doc, 100)
    text = tokenizer.decode(cut)
    assert text.startswith("Read the following article and then summarize it.\n# The agency")
    assert text.endswith("\nNow summarize the above article.\nSummary:")
    assert len(cut) < len(full) and len(cut) <= 100 + len(prompt_ids(tokenizer, "", 0)) + 2
    assert len(prompt_ids(tokenizer, doc, 10**6, max_tokens=300)) <= 300


def test_finetuning_examples_mask_the_prompt(tokenizer):
    rows = load_rows(COPY, "document", "train")
    assert len(rows) == 2 and set(rows[0]) == {"document", "summary"}
    examples = finetune_examples(tokenizer, rows, max_length=512, max_document_tokens=60)
    for row, ex in zip(rows, examples):
        prompt = prompt_ids(tokenizer, row["document"], 60)
        assert ex["input_ids"][: len(prompt)] == prompt
        assert ex["labels"][: len(prompt)] == [IGNORE] * len(prompt)  # no loss on the prompt
        target = ex["labels"][len(prompt):]
        assert target == ex["input_ids"][len(prompt):] and target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]).strip() == row["summary"].strip()
    # a short window keeps the whole summary and cuts the document
    summary_tokens = len(tokenizer(" " + rows[0]["summary"], add_special_tokens=False)["input_ids"]) + 1
    window = summary_tokens + len(prompt_ids(tokenizer, "", 0)) + 20
    short = encode_example(tokenizer, rows[0]["document"], rows[0]["summary"], max_length=window)
    assert window - 5 <= len(short["input_ids"]) <= window
    assert tokenizer.decode([t for t in short["labels"] if t != IGNORE][:-1]).strip() == rows[0]["summary"].strip()
    # a window too small for the summary keeps the template and cuts the summary's end
    tiny = encode_example(tokenizer, rows[0]["document"], rows[0]["summary"], max_length=summary_tokens)
    assert len(tiny["input_ids"]) == summary_tokens and tiny["labels"][-1] != IGNORE

    batch = collate_summaries(examples, pad_token_id=tokenizer.pad_token_id)
    n0, n1 = len(examples[0]["input_ids"]), len(examples[1]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(n0, n1))
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    # the loss the trainer takes counts the summary tokens only
    model = tiny_llama(vocab_size=len(tokenizer), context=128)
    _, counted = causal_lm_nll(model, batch["input_ids"], labels=batch["labels"])
    assert counted == sum(sum(t != IGNORE for t in e["labels"][1:]) for e in examples)


def test_govreport_runs_end_to_end(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer), context=128)
    result = EVALUATIONS["govreport"](model, tokenizer, 256, hub_path=COPY, max_new_tokens=12,
                                      max_document_tokens=150, batch_size=2)
    assert result["eval"] == "govreport" and result["length"] == 256 and len(result["examples"]) == 3
    assert all(e["prompt_tokens"] <= 256 - 12 for e in result["examples"])
    again = rouge([e["output"] for e in result["examples"]], [e["summary"] for e in result["examples"]])
    assert {k: result["metrics"][k] for k in again} == again
    assert set(result["metrics"]) == {"rouge1", "rouge2", "rougeL", "prompt_tokens_mean"}
