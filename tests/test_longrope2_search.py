"""LongRoPE2's search (Shang et al. 2025): the needle-driven fitness scores only the answer tokens, the
critical-dimension space gives NTK factors below d_rcd and searches the rest, and the search stays
seeded and resumable with the new settings in its fingerprint."""

import json
import math

import numpy as np
import pytest
import torch

from longctx.rope import RopeGeometry, apply_to_model, build_rope_parameters, geometry_of, inverse_frequencies
from longctx.search import (NeedleFitness, PerplexityFitness, critical_dimension, critical_space,
                            evolutionary_search, needle_rows, plain_task)
from longctx.search.needle import ANSWER, INSTRUCTION, KEY, NEEDLE, QUESTION

from conftest import tiny_llama

CRITICAL = {"enabled": True, "formula": "paper", "index": None, "lowest_periods": 10, "lambda_max_ratio": 2.0}
SETTINGS = {"population": 10, "iterations": 4, "mutations": 4, "crossovers": 4, "parents": 4, "mutation_prob": 0.3,
            "crossover_prob": 0.15, "lambda_max_ratio": 1.25, "lambda_max_plus_one": False, "step": 0.01,
            "n_hat_choices": [0], "critical_dim": CRITICAL}


def word_encode(text: str) -> list[int]:
    """A stand-in tokenizer: one id per word, one per digit of a number (ids 3..95)."""
    out = []
    for word in text.split():
        if word.strip(".:").isdigit():
            out += [3 + int(c) for c in word.strip(".:")]
        else:
            out.append(13 + sum(map(ord, word)) % 83)
    return out


# --- needle-driven perplexity ---------------------------------------------------------------------


def test_needle_rows_plant_the_needle_at_each_depth_and_ask_for_it_at_the_end():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 96, 300) for _ in range(2)]
    rows = needle_rows(docs, 200, [0.0, 0.5], seed=3, encode=word_encode, bos_id=1)
    assert rows.windows.shape == (4, 200) and [r["document"] for r in rows.rows] == [0, 0, 1, 1]
    prefix = [1] + word_encode(INSTRUCTION)
    for window, start, row in zip(rows.windows.tolist(), rows.answer_start.tolist(), rows.rows):
        number = row["number"]
        needle, question = word_encode(NEEDLE.format(key=KEY, number=number)), word_encode(QUESTION.format(key=KEY))
        answer = word_encode(ANSWER.format(number=number))
        assert window[: len(prefix)] == prefix and window[start:] == answer and len(answer) == 7
        assert window[start - len(question) : start] == question
        at = row["needle_at"]
        assert window[at : at + len(needle)] == needle
        text = window[len(prefix) : at] + window[at + len(needle) : start - len(question)]
        assert text == docs[row["document"]][: len(text)].tolist()  # the document, uncut around the needle
        assert at - len(prefix) == round(row["depth"] * len(text))
    assert rows.rows[0]["needle_at"] == len(prefix)  # depth 0: right after the instruction (the paper)
    # the released code's placement: one needle per document, stratified, moved to a line break
    breaks = {7}
    docs[0][[40, 100, 160]] = 7
    strat = needle_rows(docs, 200, "stratified", seed=3, encode=word_encode, bos_id=1, breaks=breaks)
    assert len(strat.rows) == 2 and 0 <= strat.rows[0]["depth"] < 0.5 <= strat.rows[1]["depth"] < 1
    assert strat.windows[0, strat.rows[0]["needle_at"] - 1] == 7  # right after a line break
    assert needle_rows(docs, 200, [0.5], seed=3, encode=word_encode).windows.tolist() == \
        needle_rows(docs, 200, [0.5], seed=3, encode=word_encode).windows.tolist()  # seeded


@pytest.fixture(scope="module")
def needle_model():
    model = tiny_llama(context=32)
    docs = [np.random.default_rng(1).integers(3, 96, 200) for _ in range(2)]
    return model, needle_rows(docs, 128, [0.0, 0.5], seed=5, encode=word_encode, bos_id=1)


def test_needle_fitness_equals_the_hand_computed_nll_of_the_answer_tokens(needle_model):
    model, rows = needle_model
    task = plain_task(geometry_of(model.config), 4.0, {**SETTINGS, "critical_dim": {"enabled": False}})
    starts = rows.answer_start.clone()
    starts[1] -= 3  # rows whose answers start at different places (a tokenizer may split numbers unevenly)
    fitness = NeedleFitness(model, rows.windows, starts, task, batch_tokens=128 * 8)
    factors = [1.0, 1.3, 1.8, 2.5, 3.2, 4.0, 4.6, 5.0]
    score = fitness.evaluate([(2, factors)])[0]
    assert score.complete and fitness.forwards == 1
    # by hand: the model with these factors, full logits, log-softmax at each answer token
    apply_to_model(model, "longrope", 4.0, {"factors": factors, "n_hat": 2})
    with torch.no_grad():
        logp = model(rows.windows).logits.double().log_softmax(-1)
    means = []
    for r, start in enumerate(starts.tolist()):
        targets = rows.windows[r, start:]
        means.append(-logp[r, start - 1 : -1].gather(1, targets[:, None]).mean().item())
    assert score.perplexity == pytest.approx(math.exp(sum(means) / len(means)), rel=1e-6)
    # not the perplexity of every token
    every = PerplexityFitness(model, rows.windows, task, batch_tokens=128 * 8).evaluate([(2, factors)])[0]
    assert abs(every.perplexity - score.perplexity) > 1e-3 * score.perplexity
    # early abandoning still works on needle rows: one row per call, a cutoff the first row reaches
    single = NeedleFitness(model, rows.windows, starts, task, batch_tokens=128)
    bound = single.evaluate([(2, factors)], cutoff=1.0)[0]
    assert (bound.complete, bound.documents) == (False, 1) and 1.0 <= bound.perplexity < score.perplexity


# --- the critical dimension -----------------------------------------------------------------------


def test_theoretical_critical_dimensions_are_the_papers():
    llama3 = RopeGeometry(128, 500000.0, 8192)
    assert critical_dimension(llama3) == 35  # paper section 1: "from 35 to 30" for LLaMA3-8B
    assert critical_dimension(RopeGeometry(96, 10000.0, 2048)) == 31  # Phi3-mini at 2k (paper section 2.1)
    assert critical_dimension(llama3, formula="code") == 34  # the first author's script: one lower
    assert critical_dimension(llama3, periods=10) == 24  # Algorithm 1's lowest candidate (10 periods in L)


def test_factors_below_the_critical_dimension_equal_the_ntk_formula():
    g = RopeGeometry(head_dim=64, base=10000.0, original_context=256)
    space = critical_space(g, 8.0, SETTINGS)
    assert space.theoretical == math.ceil(32 * math.log(256 / (2 * math.pi)) / math.log(10000.0))
    assert (space.lambda_min, space.lambda_max) == (8.0, 16.0) and len(space.candidates) > 2
    for rcd in space.candidates:
        searched = sorted(space.to_grid(x) for x in np.linspace(9.37, 15.5, g.n_pairs - rcd))
        factors = space.factors((0, tuple(searched)))
        assert factors[rcd:] == [round(k * 0.01, 10) for k in searched]
        # NTK: the base b' that puts pair rcd at lambda_rcd, b' = b * lambda_rcd^(d / (2 rcd)), gives
        # lambda_i = theta_i / theta'_i for every pair below it (float64, independently)
        b_ntk = g.base * 9.37 ** (g.head_dim / (2 * rcd))
        ntk = (g.theta() / RopeGeometry(g.head_dim, b_ntk, 256).theta()).tolist()
        assert factors[:rcd] == pytest.approx(ntk[:rcd], rel=1e-9)
        # and the model rotates those pairs at the NTK base's frequencies
        rp = build_rope_parameters("longrope", 8.0, {"factors": factors, "mscale": 1.0}, g)
        freq = inverse_frequencies(rp, g.head_dim, 2048)
        assert freq[:rcd].tolist() == pytest.approx((1 / b_ntk ** (torch.arange(0, 64, 2).double() / 64))[:rcd].tolist(),
                                                    rel=1e-6)


def critical_of(factors, candidates) -> int:
    """The d_rcd of a candidate's factors: the highest pair below which they are NTK from it."""
    return max(r for r in candidates if all(f == pytest.approx(factors[r] ** (i / r), rel=1e-9)
                                            for i, f in enumerate(factors[:r])))


def critical_fitness(calls, best_rcd=5, candidates=(3, 4, 5, 6, 7)):
    """Lower is better the closer d_rcd is to ``best_rcd`` and the searched factors to 12."""

    def fitness(n_hat, factors):
        calls.append(list(factors))
        rcd = critical_of(factors, candidates)
        return 5 + 3 * abs(rcd - best_rcd) + 0.01 * sum((x - 12) ** 2 for x in factors[rcd:])

    return fitness


def test_the_critical_search_keeps_its_constraints_and_finds_the_critical_dimension(tmp_path):
    g = RopeGeometry(32, 10000.0, 256)  # 16 pairs; d_tcd = ceil(16 log_b(256 / 2 pi)) = 7, 10 periods: 3
    space = critical_space(g, 8.0, SETTINGS)
    assert space.candidates == (3, 4, 5, 6, 7)
    calls = []
    result = evolutionary_search(critical_fitness(calls), space, [], SETTINGS, seed=2, log_path=tmp_path / "log.jsonl")
    # the first population: one individual per candidate, every searched factor one integer in [s, 2s]
    for rcd, factors in zip(space.candidates, calls):
        assert len(set(factors[rcd:])) == 1 and factors[rcd] in range(8, 17)
    for factors in calls:  # NTK below some candidate d_rcd, monotone within [s, 2s] from it on
        rcd = critical_of(factors, space.candidates)
        assert all(8.0 <= x <= 16.0 for x in factors[rcd:]) and factors[rcd:] == sorted(factors[rcd:])
    assert len({critical_of(f, space.candidates) for f in calls}) == 5  # every candidate d_rcd was tried
    assert result["critical_dim"] == 5 and result["history"][-1]["best_critical_dim"] == 5
    assert critical_of(result["factors"], space.candidates) == 5
    record = plain_task(g, 8.0, SETTINGS).record({**result, "timing": {}})
    assert record["critical_dim"] == {"found": 5, "theoretical": 7, "candidates": [3, 4, 5, 6, 7],
                                      "formula": "paper", "lambda_bounds": [8.0, 16.0]}
    # the code's settings: d_tcd one lower, or a fixed critical dimension
    assert critical_space(g, 8.0, {**SETTINGS, "critical_dim": {**CRITICAL, "formula": "code"}}).candidates == \
        (2, 3, 4, 5, 6)
    assert critical_space(g, 8.0, {**SETTINGS, "critical_dim": {**CRITICAL, "index": 7}}).candidates == (7,)


def test_a_killed_critical_search_resumes_to_the_same_result_and_other_settings_start_afresh(tmp_path):
    g = RopeGeometry(32, 10000.0, 256)
    space = critical_space(g, 8.0, SETTINGS)
    straight = evolutionary_search(critical_fitness([]), space, [], SETTINGS, seed=4, log_path=tmp_path / "a.jsonl")
    calls = []
    fitness = critical_fitness(calls)

    def dies_after_15(n_hat, factors):
        if len(calls) == 15:
            raise KeyboardInterrupt("killed")
        return fitness(n_hat, factors)

    with pytest.raises(KeyboardInterrupt):
        evolutionary_search(dies_after_15, space, [], SETTINGS, seed=4, log_path=tmp_path / "b.jsonl")
    again = []
    resumed = evolutionary_search(critical_fitness(again), space, [], SETTINGS, seed=4, log_path=tmp_path / "b.jsonl")
    assert resumed["resumed_from_log"] == 15 and len(again) == straight["evaluated"] - 15
    assert (resumed["factors"], resumed["critical_dim"], resumed["perplexity"]) == \
        (straight["factors"], straight["critical_dim"], straight["perplexity"])
    # the log's fingerprint covers the critical-dimension settings: the code's formula is another search
    code = {**SETTINGS, "critical_dim": {**CRITICAL, "formula": "code"}}
    other = []
    evolutionary_search(critical_fitness(other, candidates=(2, 3, 4, 5, 6)), critical_space(g, 8.0, code), [], code, seed=4,
                        log_path=tmp_path / "b.jsonl")
    assert len(other) > 0 and list(tmp_path.glob("b.jsonl.set-aside-*"))


# --- through the search job ------------------------------------------------------------------------


def test_a_longrope2_search_job_records_the_critical_dimension_and_its_needles_and_reruns_from_its_log(
        tmp_path, austen_tokenizer):
    from test_longrope2_train import write_token_files

    from longctx import config as lc
    from longctx import jobs
    from longctx.artifacts import read_json
    from longctx.data import load_tokenizer

    tiny_llama(vocab_size=512, context=32).save_pretrained(tmp_path / "base")
    load_tokenizer(austen_tokenizer).save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(2)
    write_token_files(tmp_path / "validation", [rng.integers(3, 512, n) for n in (300, 280, 120)])
    run = lc.RunInfo(experiment="t", model_source="pretrain", model="pretrain", original_context=32, seed=0)
    settings = {k: v for k, v in lc.load_config("config.yaml")["search"].items() if k not in ("corpus", "split")}
    settings.update(population=6, iterations=2, mutations=2, crossovers=2, parents=3, documents=2)
    variant = lc.Variant("lr2-x8", "longrope", 8.0, {}, finetune=False, search=True, search_settings={
        "fitness": "needle", "needle": {"depths": [0.0, 0.5]}, "critical_dim": {"enabled": True},
        "n_hat_choices": [0]})
    out = tmp_path / "search" / "factors.json"
    jobs.search(model=tmp_path / "base", data=tmp_path / "validation", out=out, variant=variant, settings=settings,
                run=run, device="cpu")
    found = read_json(out)
    cd = found["critical_dim"]
    assert found["fitness"] == "needle" and cd["found"] in cd["candidates"] and cd["theoretical"] == 2
    rcd, factors = cd["found"], found["factors"]
    assert factors[:rcd] == pytest.approx([factors[rcd] ** (i / rcd) for i in range(rcd)], rel=1e-9)
    assert [(n["document"], n["depth"]) for n in found["needles"]] == \
        [(d, x) for d in found["documents"] for x in (0.0, 0.5)]
    # a rerun reads every score back from the log: the same result, nothing recomputed
    jobs.search(model=tmp_path / "base", data=tmp_path / "validation", out=out, variant=variant, settings=settings,
                run=run, device="cpu")
    again = read_json(out)
    assert again["resumed_from_log"] == again["evaluated"] == found["evaluated"]
    assert (again["factors"], again["critical_dim"]) == (found["factors"], found["critical_dim"])
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert log[0]["type"] == "fingerprint" and len(log) == 1 + found["evaluated"]
