"""WikiQA (FFQA, AltQA): presence scoring, answer position, the hub loader on local copies, end to end."""

import pytest

from longctx.data import load_tokenizer
from longctx.evaluate import EVALUATIONS, EvaluationError
from longctx.evaluate.wikiqa import answer_position, load_rows, parse_row, prompt_text, score, split_for

from conftest import REPO, tiny_llama

COPIES = {task: str(REPO / "tests" / "fixtures" / f"wikiqa_{task}") for task in ("ffqa", "altqa")}


def row(prompt, answer):
    return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}


def test_presence_scoring_on_hand_made_answers():
    doc = "Document:\n" + "filler text. " * 20 + "The mill was built in 1712. " + "more filler. " * 20
    rows = [row(doc + "\nQuestion:\nWhen was the mill built?", " 1712 ")] * 3
    results, metrics = score(rows, ["It was built in 1712.", "In 1713.", "1712"])
    assert [r["correct"] for r in results] == [True, False, True]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy_middle"] == pytest.approx(2 / 3) and metrics["count_middle"] == 3
    assert "accuracy_start" not in metrics  # no answer was placed there


def test_answer_position_in_the_document():
    body = "x" * 1000
    for at, where in ((0, "start"), (50, "start"), (500, "middle"), (960, "end")):
        doc = body[:at] + "ANSWER" + body[at:]
        assert answer_position(f"Intro.\nDocument:\n{doc}\nQuestion:\nWhat?", "ANSWER") == where
        # the question before the document does not shift the position
        assert answer_position(f"Intro.\nQuestion:\n{'What? ' * 50}\nDocument:\n{doc}", "ANSWER") == where
    assert answer_position("Document:\nnothing here\nQuestion:\nWhat?", "ANSWER") == "absent"
    assert split_for(4096) == "4k"
    with pytest.raises(EvaluationError, match="not a multiple of 1024"):
        split_for(3000)


@pytest.mark.parametrize("task", ["ffqa", "altqa"])
def test_loader_reads_the_hub_format(task):
    rows = load_rows(COPIES[task], "2k")
    assert len(rows) == 12
    for r in rows:
        prompt, reference = parse_row(r)
        assert reference in prompt and "Question:" in prompt
        assert answer_position(prompt, reference) == r["answer_location"]
    assert len(load_rows(COPIES[task], "4k", limit=2)) == 2
    with pytest.raises(EvaluationError, match="no split '16k'"):
        load_rows(COPIES[task], "16k")


@pytest.mark.parametrize("task", ["ffqa", "altqa"])
def test_wikiqa_runs_end_to_end(austen_tokenizer, task):
    tokenizer = load_tokenizer(austen_tokenizer)
    model = tiny_llama(vocab_size=len(tokenizer), context=256)
    result = EVALUATIONS[f"wikiqa_{task}"](model, tokenizer, 4096, hub_path=COPIES[task], max_new_tokens=4,
                                           prompt_template="{prompt}\nAnswer:")
    assert result["eval"] == f"wikiqa_{task}" and result["length"] == 4096
    assert result["source"].endswith(":4k") and len(result["examples"]) == 6
    for e in result["examples"]:
        assert e["correct"] == (e["reference"].strip() in e["output"])
    m = result["metrics"]
    assert m["accuracy"] == sum(e["correct"] for e in result["examples"]) / 6
    assert m["count_start"] == m["count_middle"] == m["count_end"] == 2
    # Giraffe's optional filter on prompt length
    longest = max(e["prompt_tokens"] for e in result["examples"])
    with pytest.raises(EvaluationError, match="no prompt of split 4k"):
        EVALUATIONS[f"wikiqa_{task}"](model, tokenizer, 4096, hub_path=COPIES[task], max_new_tokens=1,
                                      max_prompt_tokens=10)
    kept = EVALUATIONS[f"wikiqa_{task}"](model, tokenizer, 4096, hub_path=COPIES[task], max_new_tokens=1,
                                         max_prompt_tokens=longest)
    assert kept["skipped_too_long"] == 0


def test_vicuna_prompt_format_is_the_user_turn_of_giraffes_template(austen_tokenizer):
    prompt, _ = parse_row(load_rows(COPIES["ffqa"], "2k", limit=1)[0])
    assert prompt_text(prompt, "plain", "{prompt}\nAnswer:") == prompt + "\nAnswer:"
    assert prompt_text(prompt, "vicuna") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        f"detailed, and polite answers to the user's questions. USER: {prompt} ASSISTANT:")
    # the evaluation reads it: the vicuna prompts are longer by the template's tokens
    tokenizer = load_tokenizer(austen_tokenizer)
    model = tiny_llama(vocab_size=len(tokenizer), context=256)
    run = {fmt: EVALUATIONS["wikiqa_ffqa"](model, tokenizer, 2048, hub_path=COPIES["ffqa"], max_new_tokens=1,
                                          max_examples=1, prompt_template="{prompt}", prompt_format=fmt)
           for fmt in ("plain", "vicuna")}
    extra = len(tokenizer(prompt_text("", "vicuna"), add_special_tokens=False)["input_ids"])
    assert run["vicuna"]["examples"][0]["prompt_tokens"] - run["plain"]["examples"][0]["prompt_tokens"] >= extra - 2
