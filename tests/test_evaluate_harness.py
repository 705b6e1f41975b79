"""lm-evaluation-harness on the extended model object, with a task defined over local files."""

import pytest
import torch

from longctx.data import load_tokenizer
from longctx.evaluate import EVALUATIONS, EvaluationError
from longctx.evaluate.harness import TASK_SETS, _spec, flat_metrics, run_harness, task_list, task_manager
from longctx.rope import apply_to_model

from conftest import REPO, tiny_llama

FIXTURES = REPO / "tests" / "fixtures" / "harness"
TASK = "longctx_tiny_choice"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """The tiny YAML task, pointed at the jsonl fixture."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    text = (FIXTURES / "tiny_choice.yaml.in").read_text().replace("DATA_FILE", str(FIXTURES / "tiny_choice.jsonl"))
    (folder / f"{TASK}.yaml").write_text(text)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(austen_tokenizer):
    return load_tokenizer(austen_tokenizer)


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenized as lm-eval does (whole string, context prefix cut off)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return float(sum(logits[t - 1, whole[t]] for t in range(n_context, len(whole))))


def test_named_task_sets():
    assert [t for t, _ in task_list(["pi"])] == ["boolq", "piqa", "race_middle", "race", "winogrande"]
    assert task_list(["longrope"]) == [("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5), ("truthfulqa_mc2", 0)]
    assert task_list(["pi"], [{"task": "boolq", "num_fewshot": 0}, {"task": "x"}]) == TASK_SETS["pi"] + [("x", 0)]
    with pytest.raises(EvaluationError, match="unknown set 'yarn'"):
        task_list(["yarn"])
    assert flat_metrics({"boolq": {"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": "boolq"}}) == {"boolq/acc": 0.5}


def test_harness_measures_the_extended_model(task_dir, tokenizer):
    import json

    model = tiny_llama(vocab_size=len(tokenizer), context=32)
    apply_to_model(model, "yarn", 4.0, {})  # the harness must see this RoPE, not a reloaded checkpoint
    out = run_harness(model, tokenizer, [(TASK, 0)], 128, include_path=task_dir, batch_size=2, log_samples=True)
    rows = [json.loads(line) for line in (FIXTURES / "tiny_choice.jsonl").read_text().splitlines()]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == len(rows)
    predictions = []
    for sample, row in zip(samples, rows):
        harness = [float(r[0]) for r in sample["filtered_resps"]]
        ours = [continuation_logprob(model, tokenizer, row["question"], " " + c) for c in row["choices"]]
        assert harness == pytest.approx(ours, abs=1e-4)
        predictions.append(max(range(len(ours)), key=ours.__getitem__))
    expected_acc = sum(p == r["answer"] for p, r in zip(predictions, rows)) / len(rows)
    assert out["results"][TASK]["acc,none"] == pytest.approx(expected_acc)

    # the registered evaluation: flat metrics, the lm-eval version, one JSON's worth
    result = EVALUATIONS["harness"](model, tokenizer, 128, task_sets=[], tasks=[{"task": TASK, "num_fewshot": 0}],
                                    include_path=task_dir, batch_size=4)
    assert result["eval"] == "harness" and result["length"] == 128
    assert result["metrics"] == {f"{TASK}/acc": pytest.approx(expected_acc)}
    assert result["lm_eval_version"] and result["samples"][TASK] == len(rows)
    # RACE-M, which lm-eval lacks (its `race` is RACE-H), is lm-eval's race task on the middle-school set
    race_m = _spec("race_middle", task_manager())
    assert race_m["task"] == "race_middle" and race_m["dataset_name"] == "middle" and callable(race_m["doc_to_text"])
