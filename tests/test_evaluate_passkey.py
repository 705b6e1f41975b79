"""Passkey retrieval: prompt construction, scoring, PI's k_max and the depth-by-length heatmap."""

import pytest

from longctx.data import load_tokenizer
from longctx.evaluate import EVALUATIONS, EvaluationError
from longctx.evaluate.passkey import (NEEDLE, QUESTION, TASK, build_prompt, depth_length_grid, grid_lengths, is_correct, k_max,
                                      plot_heatmap, trials)

from conftest import tiny_llama


@pytest.fixture(scope="module")
def tokenizer(austen_tokenizer):
    return load_tokenizer(austen_tokenizer)


def test_scoring_takes_the_first_integer():
    assert is_correct(" 48213. Remember it.", 48213)
    assert is_correct("48213", 48213)
    assert not is_correct(" 48214.", 48213)
    assert not is_correct(" the key is 1 and 48213", 48213)  # the first integer counts
    assert not is_correct(" I do not know", 48213)


def test_k_max_on_a_known_pattern():
    # succeeds (>= 20%) up to 3072, fails at 4096, succeeds again later: k_max stops at the first failure
    acc = {1024: 1.0, 2048: 0.6, 3072: 0.2, 4096: 0.1, 5120: 0.9}
    assert k_max(acc) == 3072
    assert k_max({1024: 0.0, 2048: 1.0}) == 0
    assert k_max({1024: 1.0, 2048: 1.0}) == 2048
    assert k_max(acc, threshold=0.5) == 2048
    assert grid_lengths(32768, 32) == [1024 * k for k in range(1, 33)]  # PI's 32 evenly spaced lengths


def test_prompts_fit_the_length_and_hide_the_key_at_its_depth(tokenizer):
    for depth in (0.0, 0.5, 1.0):
        ids = build_prompt(tokenizer, 1000, 73519, depth)
        assert 950 < len(ids) <= 1000
        text = tokenizer.decode(ids)
        assert text.count("73519") == 2
        # the needle's place in the filler between the task and the question
        needle = NEEDLE.format(key=73519).strip()
        begin, end = text.index(TASK) + len(TASK), text.index(QUESTION.strip()) - len(needle)
        assert abs((text.index(needle) - begin) / (end - begin) - depth) < 0.05
    with pytest.raises(EvaluationError, match="too short"):
        build_prompt(tokenizer, 40, 73519, 0.5)
    # the same seed draws the same trials for every variant
    assert trials(512, 10, 1) == trials(512, 10, 1) != trials(1024, 10, 1)


def test_passkey_runs_end_to_end(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer), context=128)
    result = EVALUATIONS["passkey"](model, tokenizer, 256, trials_per_length=4, seed=3, max_new_tokens=6)
    assert result["eval"] == "passkey" and result["length"] == 256
    assert len(result["trials"]) == 4
    for t, (key, depth) in zip(result["trials"], trials(256, 4, 3)):
        assert (t["key"], t["depth"]) == (key, depth) and t["prompt_tokens"] <= 256
        assert t["correct"] == is_correct(t["answer"], key)
    assert result["metrics"]["accuracy"] == sum(t["correct"] for t in result["trials"]) / 4


def test_heatmap_from_per_length_results(tmp_path):
    def result(length, rows):
        return {"eval": "passkey", "length": length, "metrics": {"accuracy": sum(c for _, c in rows) / len(rows)},
                "trials": [{"depth": d, "correct": c} for d, c in rows]}

    results = [result(1024, [(0.05, True), (0.55, True), (0.95, True)]),
               result(2048, [(0.05, True), (0.07, False), (0.95, False)])]
    lengths, edges, grid = depth_length_grid(results, depth_bins=2)
    assert lengths == [1024, 2048] and list(edges) == [0.0, 0.5, 1.0]
    assert grid[0, 0] == 1.0 and grid[1, 0] == 1.0
    assert grid[0, 1] == 0.5 and grid[1, 1] == 0.0
    plot_heatmap(results, tmp_path / "passkey.png", depth_bins=4)
    assert (tmp_path / "passkey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
