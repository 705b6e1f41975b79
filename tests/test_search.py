"""LongRoPE's evolutionary search on a cheap synthetic fitness: constraints, seeding, resume."""

import json
import math

import pytest

from longctx.rope import RopeGeometry
from longctx.search import SearchSpace, evolutionary_search, seed_factors, space_for

GEOMETRY = RopeGeometry(head_dim=16, base=10000.0, original_context=64)
SETTINGS = {"population": 12, "iterations": 4, "mutations": 4, "crossovers": 4, "parents": 6,
            "mutation_prob": 0.3, "crossover_prob": 0.15, "lambda_max_ratio": 1.25, "lambda_max_plus_one": False,
            "step": 0.01, "n_hat_choices": [0, 1, 2, 4, 8]}


def synthetic_fitness(calls):
    """Lower is better the closer the factors are to a ramp from 1 to 4; n_hat 4 is best."""
    target = [1 + 3 * i / 7 for i in range(8)]

    def fitness(n_hat, factors):
        calls.append((n_hat, tuple(factors)))
        return 10 + sum((a - b) ** 2 for a, b in zip(factors, target)) + abs(n_hat - 4) / 10

    return fitness


def test_seeds_are_pi_ntk_and_yarn():
    seeds = seed_factors(GEOMETRY, 4.0)
    assert set(seeds) == {"pi", "ntk", "yarn"}
    assert seeds["pi"] == pytest.approx([4.0] * 8)
    # NTK-aware: lambda_i = (b'/b)^(2i/d) with b' = b * s^(d/(d-2))
    ntk = [(4.0 ** (16 / 14)) ** (2 * i / 16) for i in range(8)]
    assert seeds["ntk"] == pytest.approx(ntk, rel=1e-5)


@pytest.mark.parametrize("family,betas", [("llama", (1, 32)), ("mistral", (2, 128))])
def test_the_yarn_seed_is_the_released_codes_yarn_with_the_model_familys_betas(family, betas):
    from longctx.rope import build_rope_parameters, inverse_frequencies

    g = RopeGeometry(head_dim=128, base=10000.0, original_context=4096, model_type=family)
    released = build_rope_parameters("yarn", 8.0, {"ramp": "code", "alpha": betas[0], "beta": betas[1]}, g)
    expected = (g.theta() / inverse_frequencies(released, g.head_dim)).tolist()
    assert seed_factors(g, 8.0)["yarn"] == pytest.approx(expected, rel=1e-9)


def test_every_candidate_obeys_the_constraints_and_none_is_evaluated_twice(tmp_path):
    calls = []
    space = space_for(GEOMETRY, 4.0, SETTINGS)
    result = evolutionary_search(synthetic_fitness(calls), space, list(seed_factors(GEOMETRY, 4.0).values()),
                                 SETTINGS, seed=7, log_path=tmp_path / "log.jsonl")
    assert len(calls) == len(set(calls)) == result["evaluated"]
    for n_hat, factors in calls:
        assert n_hat in SETTINGS["n_hat_choices"]
        assert all(1.0 <= x <= 5.0 + 1e-9 for x in factors)
        assert all(a <= b for a, b in zip(factors, factors[1:]))
        assert all(abs(x * 100 - round(x * 100)) < 1e-6 for x in factors)  # on the 0.01 grid
    # the search improves on its seeds
    history = result["history"]
    assert history[-1]["best_perplexity"] <= history[0]["best_perplexity"]
    assert result["perplexity"] == min(10 + sum((a - (1 + 3 * i / 7)) ** 2 for i, a in enumerate(f))
                                       + abs(n - 4) / 10 for n, f in calls)


def test_killed_search_resumes_to_the_same_result(tmp_path):
    seeds = list(seed_factors(GEOMETRY, 4.0).values())
    space = space_for(GEOMETRY, 4.0, SETTINGS)
    straight = evolutionary_search(synthetic_fitness([]), space, seeds, SETTINGS, seed=3, log_path=tmp_path / "a.jsonl")

    calls = []
    fitness = synthetic_fitness(calls)

    def dies_after_20(n_hat, factors):
        if len(calls) == 20:
            raise KeyboardInterrupt("killed")
        return fitness(n_hat, factors)

    with pytest.raises(KeyboardInterrupt):
        evolutionary_search(dies_after_20, space, seeds, SETTINGS, seed=3, log_path=tmp_path / "b.jsonl")
    # a kill can also cut the last log line in half
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write('{"type": "candid')
    rerun_calls = []
    resumed = evolutionary_search(synthetic_fitness(rerun_calls), space, seeds, SETTINGS, seed=3,
                                  log_path=tmp_path / "b.jsonl")
    assert resumed["resumed_from_log"] == 20
    assert len(rerun_calls) == straight["evaluated"] - 20  # nothing already in the log is recomputed
    assert (resumed["factors"], resumed["n_hat"], resumed["perplexity"]) == \
        (straight["factors"], straight["n_hat"], straight["perplexity"])
    assert resumed["history"] == [dict(h, seconds=r["seconds"]) for h, r in zip(straight["history"], resumed["history"])]
    # the log of the resumed run is whole again: a third run recomputes nothing
    again = []
    evolutionary_search(synthetic_fitness(again), space, seeds, SETTINGS, seed=3, log_path=tmp_path / "b.jsonl")
    assert again == []


def test_space_bounds_follow_paper_or_code():
    assert space_for(GEOMETRY, 8.0, SETTINGS).lambda_max == 10.0  # paper: 1.25 s
    assert space_for(GEOMETRY, 8.0, {**SETTINGS, "lambda_max_plus_one": True}).lambda_max == 9.0  # code: 1 + s


def test_first_population_starts_with_the_pi_ntk_and_yarn_seeds(tmp_path):
    calls = []
    space = space_for(GEOMETRY, 4.0, SETTINGS)
    seeds = seed_factors(GEOMETRY, 4.0)
    evolutionary_search(synthetic_fitness(calls), space, list(seeds.values()), SETTINGS, seed=1,
                        log_path=tmp_path / "log.jsonl")
    # the seeds on the 0.01 grid, made monotone, with n_hat 0: evaluated first, in order
    for (n_hat, factors), name in zip(calls[:3], ("pi", "ntk", "yarn")):
        assert n_hat == 0
        assert factors == pytest.approx(seeds[name], abs=0.0051), name
    assert calls[0] == (0, (4.0,) * 8)  # PI: lambda_i = s everywhere


def test_large_lengths_halve_the_population_and_use_fewer_documents():
    from longctx.search import settings_at

    paper = {**SETTINGS, "population": 64, "mutations": 16, "crossovers": 16, "parents": 32, "documents": 5,
             "large_length": 524288, "large_documents": 3}
    assert settings_at(paper, 524288) == paper  # 512k itself is not above 512k
    big = settings_at(paper, 1048576)
    assert (big["population"], big["mutations"], big["crossovers"], big["parents"], big["documents"]) == \
        (32, 8, 8, 16, 3)
    assert settings_at({**paper, "large_length": None}, 10**7) == {**paper, "large_length": None}


def test_too_few_long_documents_is_an_error_naming_the_key():
    from longctx.search import SearchError, pick_documents

    lengths = [100, 5000, 40, 9000, 8192]
    assert pick_documents(lengths, 8192, 2, seed=0, where="x") == [3, 4]
    with pytest.raises(SearchError, match=r"only 2 of 5 documents have at least 8192 tokens.*search\.documents asks for 3"):
        pick_documents(lengths, 8192, 3, seed=0, where="x")
    # a random choice among the long enough, fixed by the seed
    many = [9000] * 20
    assert pick_documents(many, 8192, 5, seed=1, where="x") == pick_documents(many, 8192, 5, seed=1, where="x")
    assert pick_documents(many, 8192, 5, seed=1, where="x") != pick_documents(many, 8192, 5, seed=2, where="x")


def test_a_search_where_every_candidate_diverges_fails_instead_of_returning_factors(tmp_path):
    from longctx.search import SearchError

    space = space_for(GEOMETRY, 4.0, SETTINGS)
    with pytest.raises(SearchError, match="every candidate of iteration 1 diverged"):
        evolutionary_search(lambda n_hat, factors: float("nan"), space, list(seed_factors(GEOMETRY, 4.0).values()),
                            SETTINGS, seed=3, log_path=tmp_path / "log.jsonl")
    assert "NaN" not in (tmp_path / "log.jsonl").read_text()
