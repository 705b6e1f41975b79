"""The search's fitness: batched candidates score as the model does, and early abandoning changes
nothing about which candidates survive."""

import json
import math

import pytest
import torch

from longctx.rope import RopeGeometry, apply_to_model, geometry_of
from longctx.search import (DocumentFitness, PerplexityFitness, Score, _monotone, evolutionary_search, plain_task,
                            seed_factors, space_for)

GEOMETRY = RopeGeometry(head_dim=16, base=10000.0, original_context=64)
SETTINGS = {"population": 16, "iterations": 6, "mutations": 6, "crossovers": 6, "parents": 6,
            "mutation_prob": 0.3, "crossover_prob": 0.15, "lambda_max_ratio": 1.25, "lambda_max_plus_one": False,
            "step": 0.01, "n_hat_choices": [0, 1, 2, 4, 8]}


class SyntheticDocuments(DocumentFitness):
    """Five documents, each with its own loss landscape (a ramp of factors is best); ``rows`` per call.

    Far-off candidates score far worse than near ones, as real RoPE candidates do, and the first
    documents tell them apart most, so some can be ruled out before the last document."""

    def __init__(self, rows: int, documents: int = 5):
        self.rows, self.documents = rows, documents
        self.calls = []

    def candidate_state(self, n_hat, factors):
        return n_hat, tuple(factors)

    def score_rows(self, rows):
        self.calls.append(len(rows))
        out = []
        for (n_hat, factors), j in rows:
            target = [1 + (3 + 0.2 * j) * i / 7 for i in range(8)]
            out.append(1.0 + 0.1 * j + 2.0 * (5 - j) * sum((a - b) ** 2 for a, b in zip(factors, target)) + abs(n_hat - 4) / 20)
        return out


def run(tmp_path, name, rows, early_abandon, seed=5, fitness=None):
    fitness = fitness or SyntheticDocuments(rows)
    space = space_for(GEOMETRY, 4.0, SETTINGS)
    log = tmp_path / f"{name}.jsonl"
    result = evolutionary_search(fitness, space, list(seed_factors(GEOMETRY, 4.0).values()), SETTINGS, seed, log,
                                 early_abandon=early_abandon)
    rows_logged = [r for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "candidate"]
    return result, rows_logged, fitness


@pytest.mark.parametrize("rows", [1, 2])
def test_early_abandoning_keeps_the_same_survivors(tmp_path, rows):
    full, full_log, full_fit = run(tmp_path, "full", rows, early_abandon=False)
    fast, fast_log, fast_fit = run(tmp_path, "fast", rows, early_abandon=True)
    abandoned = [r for r in fast_log if not r["complete"]]
    assert abandoned, "the landscape must let some candidates be abandoned, or this test shows nothing"
    assert sum(fast_fit.calls) < sum(full_fit.calls)  # fewer documents scored
    # the same candidates, in the same order: every generation had the same parents
    assert [r["key"] for r in fast_log] == [r["key"] for r in full_log]
    truth = {r["key"]: r["perplexity"] for r in full_log}
    for r in fast_log:
        if r["complete"]:
            assert r["perplexity"] == truth[r["key"]]
        else:  # a lower bound that could never have been a parent
            assert r["perplexity"] <= truth[r["key"]] and r["documents"] < 5
    for a, b in zip(full["history"], fast["history"]):
        assert (a["best_perplexity"], a["best_factors"], a["best_n_hat"], a["evaluated"]) == \
               (b["best_perplexity"], b["best_factors"], b["best_n_hat"], b["evaluated"])
    assert (fast["factors"], fast["n_hat"], fast["perplexity"]) == (full["factors"], full["n_hat"], full["perplexity"])
    assert fast["abandoned"] == len(abandoned) and full["abandoned"] == 0


def test_abandoned_candidates_are_not_rescored_when_a_search_resumes(tmp_path):
    straight, straight_log, _ = run(tmp_path, "straight", 1, early_abandon=True)

    class Killed(SyntheticDocuments):
        def score_rows(self, rows):
            if len(self.calls) == 120:
                raise KeyboardInterrupt("killed")
            return super().score_rows(rows)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", 1, early_abandon=True, fitness=Killed(1))
    resumed, resumed_log, fitness = run(tmp_path, "resumed", 1, early_abandon=True)
    assert [r["key"] for r in resumed_log] == [r["key"] for r in straight_log]
    assert [r["perplexity"] for r in resumed_log] == [r["perplexity"] for r in straight_log]
    assert (resumed["factors"], resumed["perplexity"]) == (straight["factors"], straight["perplexity"])
    assert 0 < resumed["resumed_from_log"] < resumed["evaluated"]


def test_several_candidates_share_a_call_when_all_documents_fit(tmp_path):
    fitness = SyntheticDocuments(rows=10)  # two candidates x five documents per call
    assert fitness.batch == 2
    shared, shared_log, _ = run(tmp_path, "shared", 10, early_abandon=True, fitness=fitness)
    assert set(fitness.calls) <= {5, 10} and 10 in fitness.calls
    single, single_log, _ = run(tmp_path, "single", 1, early_abandon=False)
    assert [r["key"] for r in shared_log] == [r["key"] for r in single_log]
    assert all(r["complete"] for r in shared_log)


# --- through a model ------------------------------------------------------------------------------


def _gridded(task, factors, n_hat=0):
    return n_hat, task.space.factors((n_hat, _monotone([task.space.to_grid(x) for x in factors])))


@pytest.fixture(scope="module")
def model_and_windows():
    from conftest import tiny_llama

    model = tiny_llama(context=16)
    torch.manual_seed(0)
    return model, torch.randint(3, 96, (3, 64))


def test_batched_candidates_score_as_the_model_does(model_and_windows):
    """Candidates sharing a forward score what applying each one's RoPE to the model and running it gives."""
    from longctx.evaluate.perplexity import window_nll

    model, windows = model_and_windows
    task = plain_task(geometry_of(model.config), 4.0, SETTINGS)
    candidates = [_gridded(task, task.seeds["pi"]), _gridded(task, task.seeds["yarn"], 4),
                  _gridded(task, task.seeds["ntk"], 2)]
    together = PerplexityFitness(model, windows, task, batch_tokens=64 * 9)  # three candidates per forward
    alone = PerplexityFitness(model, windows, task, batch_tokens=64)  # one document per forward
    assert (together.batch, alone.batch, alone.rows) == (3, 1, 1)
    a, b = together.evaluate(candidates), alone.evaluate(candidates)
    assert together.forwards == 1 and alone.forwards == 9
    for (n_hat, factors), x, y in zip(candidates, a, b):
        apply_to_model(model, "longrope", 4.0, {"factors": factors, "n_hat": n_hat})
        sums, n = window_nll(model, windows)
        expected = math.exp(sum(s / n for s in sums) / len(sums))
        assert x.complete and y.complete
        assert x.perplexity == pytest.approx(expected, rel=1e-5)
        assert y.perplexity == pytest.approx(expected, rel=1e-5)
    assert len({round(s.perplexity, 6) for s in a}) == 3  # the candidates do differ


def test_a_candidates_tables_keep_the_original_rope_unscaled_before_n_hat_as_the_model_does(model_and_windows):
    from longctx.rope import build_rope_parameters, cos_sin

    model, windows = model_and_windows
    geometry = geometry_of(model.config)
    task = plain_task(geometry, 4.0, SETTINGS)
    n_hat, factors = _gridded(task, task.seeds["yarn"], 4)
    cos, sin = PerplexityFitness(model, windows, task).candidate_state(n_hat, factors)
    positions = torch.arange(64)[None]
    params = build_rope_parameters("longrope", 4.0, task.rope_params(n_hat, factors), geometry)
    assert params["attention_factor"] > 1  # mscale at s = 4, L = 16
    model_cos, model_sin = cos_sin(params, geometry.head_dim, positions)
    assert torch.equal(cos, model_cos) and torch.equal(sin, model_sin)
    plain_cos, plain_sin = cos_sin({"rope_type": "default", "rope_theta": geometry.base}, geometry.head_dim, positions)
    assert torch.equal(cos[:, :4], plain_cos[:, :4]) and torch.equal(sin[:, :4], plain_sin[:, :4])
    assert cos[0, 4:].abs().max() > 1.0  # scaled by mscale from n_hat on


def test_a_candidate_is_abandoned_once_its_partial_loss_rules_it_out(model_and_windows):
    model, windows = model_and_windows
    task = plain_task(geometry_of(model.config), 4.0, SETTINGS)
    fitness = PerplexityFitness(model, windows, task, batch_tokens=64)
    candidate = _gridded(task, task.seeds["pi"])
    full = fitness.evaluate([candidate])[0]
    # a cutoff the first document alone reaches: stop there, with a bound below the true value
    first = fitness.evaluate([candidate], cutoff=1.0)[0]
    assert (first.complete, first.documents) == (False, 1)
    assert 1.0 <= first.perplexity < full.perplexity
    # a cutoff above the perplexity: scored in full
    again = fitness.evaluate([candidate], cutoff=full.perplexity * 1.01)[0]
    assert again == Score(full.perplexity, True, 3)


def test_compiled_layers_score_candidates_as_the_eager_model_does(model_and_windows):
    """What ``search.compile`` does on a GPU (there on by default), here on the CPU: each decoder
    layer compiled, candidates' RoPE handed in per forward; same scores, no recompiling per candidate."""
    import copy

    from longctx.models.kernels import compile_layers

    model, windows = model_and_windows
    task = plain_task(geometry_of(model.config), 4.0, SETTINGS)
    candidates = [_gridded(task, task.seeds["pi"]), _gridded(task, task.seeds["yarn"], 4)]
    eager = PerplexityFitness(model, windows, task, batch_tokens=64).evaluate(candidates)
    compiled_model = copy.deepcopy(model)
    assert compile_layers(compiled_model) == compiled_model.config.num_hidden_layers
    compiled = PerplexityFitness(compiled_model, windows, task, batch_tokens=64).evaluate(candidates)
    for x, y in zip(eager, compiled):
        assert y.perplexity == pytest.approx(x.perplexity, rel=1e-5)
    assert round(eager[0].perplexity, 6) != round(eager[1].perplexity, 6)  # the candidates do differ
    # on CPU the fitness itself leaves the layers eager (compiling costs more than it saves there)
    assert not PerplexityFitness(model, windows, task, compile=True).compiled


# --- the fitness windows: LongRoPE's BOS ------------------------------------------------------------


@pytest.mark.parametrize("fitness", ["perplexity", "needle"])
def test_search_fitness_windows_start_with_bos(tmp_path, austen_tokenizer, fitness):
    """LongRoPE's evolution/evaluate.py puts BOS before the first L'-1 tokens (add_start_token);
    ``search.bos: false`` gives the first L' tokens (needle rows: no BOS before the instruction)."""
    import numpy as np

    from conftest import tiny_llama, write_token_files
    from longctx import jobs
    from longctx.data import TokenFile, load_tokenizer

    tok = load_tokenizer(austen_tokenizer)
    tiny_llama(vocab_size=len(tok), context=32).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    write_token_files(tmp_path / "validation", [rng.integers(3, 500, n) for n in (400, 90, 300)])
    data = TokenFile.open(tmp_path / "validation")
    settings = {"documents": 2, "fitness": fitness, "needle": {"depths": [0.0]}}
    length = 256  # room for the needle rows' instruction, needle and question
    windows, ids, _, _ = jobs._search_windows(tmp_path / "validation", length, settings, 0, tmp_path / "base")
    texts = [data.document(int(d[3:])).tolist() for d in ids]
    assert windows.shape == (2, length) and (windows[:, 0] == tok.bos_token_id).all()
    plain, _, _, _ = jobs._search_windows(tmp_path / "validation", length, {**settings, "bos": False}, 0,
                                          tmp_path / "base")
    assert (plain[:, 0] != tok.bos_token_id).all()
    if fitness == "perplexity":
        assert windows[:, 1:].tolist() == [t[: length - 1] for t in texts]
        assert plain.tolist() == [t[:length] for t in texts]
