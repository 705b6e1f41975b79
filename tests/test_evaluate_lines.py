"""LongChat-Lines: the generator's format, the hub loader (on a local copy), scoring, end to end."""

import random
import re

import pytest

from longctx.data import load_tokenizer
from longctx.evaluate import EVALUATIONS, EvaluationError
from longctx.evaluate.lines import (FIELDS, generate_examples, hub_examples, is_correct, line_depth, load_hub,
                                    make_example, prompt_ids, query_line)

from conftest import REPO, tiny_llama

HUB_COPY = str(REPO / "tests" / "fixtures" / "longchat_lines")
LINE = re.compile(r"^line (\S+): REGISTER_CONTENT is <(\d+)>$", re.M)


@pytest.fixture(scope="module")
def tokenizer(austen_tokenizer):
    return load_tokenizer(austen_tokenizer)


def test_scoring_takes_the_first_integer():
    assert is_correct(" <31044>", 31044)
    assert is_correct("31044 is the number", "31044")
    assert not is_correct(" <31045>", 31044)
    assert not is_correct(" line 2 has <31044>", 31044)
    assert not is_correct(" no idea", 31044)


def test_generated_examples_have_the_hub_format_and_the_right_answer(tokenizer):
    ex = make_example(30, random.Random(0))
    assert set(FIELDS) <= set(ex) and ex["num_lines"] == 30
    lines = dict(LINE.findall(ex["prompt"]))
    assert len(lines) == 30  # distinct names
    assert query_line(ex["prompt"]) == ex["line"]
    assert int(lines[ex["line"]]) == ex["expected_number"]
    assert line_depth(ex["prompt"], ex["line"]) == list(lines).index(ex["line"]) / 29
    # as many lines as fit: each example fits, one more line would not
    examples = generate_examples(tokenizer, 600, 5, seed=1, template="{prompt}", reserve=10)
    for e in examples:
        assert len(prompt_ids(tokenizer, e, "{prompt}")) <= 590
        assert e["token_size"] == len(prompt_ids(tokenizer, e, "{prompt}"))
    most = max(e["num_lines"] for e in examples)
    longer = make_example(most + 2, random.Random(5))
    assert len(prompt_ids(tokenizer, longer, "{prompt}")) > 590
    assert generate_examples(tokenizer, 600, 5, 1, "{prompt}", 10) == examples  # seeded
    with pytest.raises(EvaluationError, match="too short for a single line"):
        generate_examples(tokenizer, 60, 1, 1, "{prompt}", 10)


def test_hub_loader_reads_the_dataset_format_through_datasets(tokenizer):
    splits = load_hub(HUB_COPY)
    assert sorted(splits, key=int) == ["4", "8"] and all(len(rows) == 3 for rows in splits.values())
    for name, rows in splits.items():
        for r in rows:
            assert r["num_lines"] == int(name)
            assert int(dict(LINE.findall(r["prompt"]))[query_line(r["prompt"])]) == r["expected_number"]
    # the split with the most lines that fits the length
    longest4 = max(len(prompt_ids(tokenizer, r, "{prompt}")) for r in splits["4"])
    longest8 = max(len(prompt_ids(tokenizer, r, "{prompt}")) for r in splits["8"])
    assert hub_examples(tokenizer, longest8 + 10, HUB_COPY, None, reserve=10)[0] == "8"
    assert hub_examples(tokenizer, longest8 + 9, HUB_COPY, None, reserve=10)[0] == "4"
    with pytest.raises(EvaluationError, match="no split of .* fits in"):
        hub_examples(tokenizer, longest4 + 9, HUB_COPY, None, reserve=10)


@pytest.mark.parametrize("source", ["generate", "hub"])
def test_lines_runs_end_to_end(tokenizer, source):
    model = tiny_llama(vocab_size=len(tokenizer), context=256)
    result = EVALUATIONS["lines"](model, tokenizer, 1024, source=source, examples=3, seed=2, max_new_tokens=5,
                                  hub_path=HUB_COPY, prompt_template="{prompt}\nThe <REGISTER_CONTENT> in line {line} is")
    assert result["eval"] == "lines" and result["length"] == 1024 and len(result["examples"]) == 3
    for e in result["examples"]:
        assert e["prompt_tokens"] <= 1024 - 5
        assert e["correct"] == is_correct(e["answer"], e["expected_number"])
        assert 0 <= e["depth"] <= 1
    assert result["metrics"]["accuracy"] == sum(e["correct"] for e in result["examples"]) / 3
    if source == "hub":
        assert result["source"].endswith(":8")
