"""LongRoPE's evolutionary search (Ding et al. 2024, Algorithm 1) over a ``SearchSpace``.

Each iteration keeps the best ``parents`` and adds ``mutations`` mutated and ``crossovers``
crossed-over children, never evaluating one candidate twice. Fitness is lower-is-better
(perplexity). Every evaluated candidate is appended to a log; a rerun replays the same seeded
algorithm and takes fitness from the log instead of recomputing, so a killed search resumes and
ends with the same result as one that was never interrupted. The log's first line holds the
fingerprint of what determines the scores (``longctx.provenance``): a log made from anything else
is set aside, never mixed in.

Early abandoning: a candidate's documents are scored one group at a time, and once the part
already scored shows the candidate cannot enter the top ``parents`` of its population, the rest
is skipped (see ``evolutionary_search`` for why the survivors are then exactly the same).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from longctx import provenance
from longctx.artifacts import ArtifactError
from longctx.search.space import Individual, SearchError, SearchSpace, _monotone, crossover_grid  # noqa: F401

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """A candidate's fitness: its perplexity, or, when ``complete`` is false, a lower bound of it
    that already ruled the candidate out (early abandoning)."""

    perplexity: float
    complete: bool = True
    documents: int | None = None  # documents scored (None: all / not tracked)


class Fitness(Protocol):
    """Scores candidates; ``batch`` is how many it prefers to take in one call.

    ``evaluate(candidates, cutoff)`` returns one ``Score`` per ``(n_hat, factors)``. With a
    ``cutoff``, it may stop scoring a candidate once a lower bound of its perplexity is >= cutoff,
    returning that bound with ``complete=False``.
    """

    batch: int

    def evaluate(self, candidates: list[tuple[int, list[float]]], cutoff: float | None) -> list[Score]: ...


class CallableFitness:
    """A plain ``fitness(n_hat, factors) -> perplexity`` function as a ``Fitness`` (no abandoning)."""

    batch = 1

    def __init__(self, fn: Callable[[int, list[float]], float]):
        self.fn = fn

    def evaluate(self, candidates, cutoff=None):
        return [Score(float(self.fn(n_hat, factors))) for n_hat, factors in candidates]


def mutate(ind: Individual, space: SearchSpace, rng: random.Random, prob: float) -> Individual:
    """Each lambda_i moves with probability ``prob`` to a grid value between its neighbours."""
    return space.mutate(ind, rng, prob)


def crossover(a: Individual, b: Individual, rng: random.Random, prob: float) -> Individual:
    """Per dimension, take the other parent's value with probability ``prob``."""
    return crossover_grid(a, b, rng, prob)


class FitnessLog:
    """Append-only record of evaluated candidates; what makes a search resumable.

    Its first line is ``{"type": "fingerprint", ...}``: the digests of what determines the scores.
    An existing log is read only when that line matches ``fingerprint`` exactly; otherwise (another
    model, other documents or settings, a log of an older version without the line) it is set
    aside and the search starts a new one. A diverged candidate (non-finite perplexity) is logged
    with ``"perplexity": null, "diverged": true`` and read back as infinitely bad."""

    def __init__(self, path: Path, fingerprint: dict | None = None):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint or {})
        self.known: dict[str, Score] = {}
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                # a kill cut the last line: drop it, so later records start on a line of their own
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text)
            rows = [self._parse(n, line) for n, line in enumerate(text.splitlines(), 1)]
            head = rows[0] if rows and rows[0].get("type") == "fingerprint" else None
            changed = provenance.changed(head.get("digests") if head else None, self.fingerprint)
            if changed:
                provenance.set_aside(self.path, f"search log made from other inputs (changed: {', '.join(changed)})")
            else:
                for row in rows:
                    if row.get("type") == "candidate":
                        value = float("inf") if row.get("diverged") else row["perplexity"]
                        self.known[row["key"]] = Score(value, row.get("complete", True), row.get("documents"))
        if not self.path.exists():
            self.record({"type": "fingerprint", "digests": self.fingerprint})

    def _parse(self, number: int, line: str) -> dict:
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{self.path}, line {number}, is corrupt ({e}); delete the file to search "
                                f"from scratch") from None

    def record(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")


def key_of(ind: Individual) -> str:
    return f"{ind[0]}|" + ",".join(map(str, ind[1]))


def cutoff_before(scores: list, position: int, parents: int) -> float | None:
    """The ``parents``-th best complete score among population members before ``position``.

    A later member whose perplexity is >= this value has ``parents`` members ahead of it in the
    population's ranking (sorted by score, ties to the earlier member), whatever the members after
    it score, so it cannot be a parent of the next generation.
    """
    done = sorted(s.perplexity for s in scores[:position] if s is not None and s.complete)
    return done[parents - 1] if len(done) >= parents else None


def evolutionary_search(fitness, space: SearchSpace, seeds: list[list[float]], settings: dict, seed: int,
                        log_path: Path, progress: Callable | None = None, early_abandon: bool = True,
                        fitness_inputs: dict | None = None) -> dict:
    """Run Algorithm 1 and return the best candidate and the history.

    ``fitness`` is a ``Fitness`` or a plain ``fitness(n_hat, factors) -> perplexity``;
    ``fitness_inputs`` are digests of what the fitness depends on (model, documents, task), which
    with the space, seeds, settings and seed fingerprint the log (``FitnessLog``).

    Early abandoning keeps the survivors exact: a candidate is only abandoned when a lower bound
    of its perplexity is >= the ``parents``-th best complete score *before* it in its population
    (``cutoff_before``), so it cannot be a parent; its recorded bound is still >= that cutoff, so
    it cannot push a member that would have been a parent out either (the ``parents`` members
    ahead of it are ahead of that member too). The parents, their order and hence every later
    generation are the same as without abandoning; only the mean perplexity of a generation
    (over its complete members) differs.
    """
    if not hasattr(fitness, "evaluate"):
        fitness = CallableFitness(fitness)
    batch = max(1, int(getattr(fitness, "batch", 1)))
    rng = random.Random(seed)
    fingerprint = {**(fitness_inputs or {}), "algorithm": provenance.digest(
        {"space": vars(space), "seeds": seeds, "settings": settings, "seed": seed, "early_abandon": early_abandon})}
    book = FitnessLog(log_path, fingerprint)
    resumed = len(book.known)
    evaluated: dict[str, Score] = {}
    started = time.time()
    n_parents = settings["parents"]

    def score_population(population: list[Individual]) -> list[Score]:
        scores: list[Score | None] = [None] * len(population)
        todo = []
        for i, ind in enumerate(population):
            k = key_of(ind)
            if k in evaluated:
                scores[i] = evaluated[k]
            else:
                assert space.is_valid(ind), f"invalid candidate {k}"
                todo.append(i)
        # in population order, ``batch`` at a time: the same groups as an uninterrupted run, so a
        # resumed search computes every number with the same batches
        for a in range(0, len(todo), batch):
            wave = todo[a : a + batch]
            cutoff = cutoff_before(scores, wave[0], n_parents) if early_abandon else None
            keys = [key_of(population[i]) for i in wave]
            if all(k in book.known for k in keys):
                results = [book.known[k] for k in keys]
            else:
                results = fitness.evaluate([(population[i][0], space.factors(population[i])) for i in wave], cutoff)
            for i, k, res in zip(wave, keys, results):
                if k in book.known:
                    res = book.known[k]
                else:
                    value = float(res.perplexity)
                    diverged = not math.isfinite(value)
                    res = Score(float("inf") if diverged else value, res.complete, res.documents)
                    book.record({"type": "candidate", "key": k, "n_hat": population[i][0],
                                 "factors": space.factors(population[i]),
                                 "perplexity": None if diverged else value, "diverged": diverged,
                                 "complete": res.complete, "documents": res.documents})
                evaluated[k] = res
                scores[i] = res
        return scores

    def fresh(make) -> Individual | None:
        for _ in range(100):  # a new, valid candidate, never seen before
            ind = make()
            if space.is_valid(ind) and key_of(ind) not in evaluated and ind not in pending:
                return ind
        return None

    seeded = space.initial(seeds, rng)
    population: list[Individual] = []
    for ind in seeded:
        if ind not in population:
            population.append(ind)
    pending = population  # `fresh` must not propose a member of the population being built
    while len(population) < settings["population"]:
        ind = fresh(lambda: space.mutate(rng.choice(seeded), rng, settings["mutation_prob"]))
        if ind is None:
            break
        population.append(ind)
    scores = score_population(population)
    history = []
    for it in range(settings["iterations"]):
        order = sorted(range(len(population)), key=lambda i: scores[i].perplexity)
        parents = [population[i] for i in order[:n_parents]]
        pending = []
        for _ in range(settings["mutations"]):
            ind = fresh(lambda: space.mutate(rng.choice(parents), rng, settings["mutation_prob"]))
            if ind is not None:
                pending.append(ind)
        for _ in range(settings["crossovers"]):
            if len(parents) < 2:
                break
            ind = fresh(lambda: space.crossover(*rng.sample(parents, 2), rng, settings["crossover_prob"]))
            if ind is not None:
                pending.append(ind)
        population = parents + pending
        scores = score_population(population)
        best = min(range(len(population)), key=lambda i: scores[i].perplexity)
        finite = [s.perplexity for s in scores if s.complete and math.isfinite(s.perplexity)]
        if not finite:
            raise SearchError(f"every candidate of iteration {it + 1} diverged (non-finite perplexity): the model "
                              f"or its data is broken; see {log_path}")
        row = {"iteration": it + 1, "best_perplexity": scores[best].perplexity,
               "mean_perplexity": sum(finite) / len(finite),
               "evaluated": len(evaluated), "abandoned": sum(not s.complete for s in evaluated.values()),
               "best_n_hat": population[best][0], "best_factors": space.factors(population[best]),
               **{f"best_{k}": v for k, v in space.describe(population[best]).items()},
               "seconds": time.time() - started}
        history.append(row)
        log.info("search iteration %d/%d: best ppl %.4f, mean %.4f, %d candidates evaluated (%d abandoned early, "
                 "%d from log), %.0fs; best n_hat %d, factors %s",
                 it + 1, settings["iterations"], row["best_perplexity"], row["mean_perplexity"], len(evaluated),
                 row["abandoned"], resumed, row["seconds"], row["best_n_hat"],
                 " ".join(f"{x:g}" for x in row["best_factors"]))
        if progress is not None:
            progress(row)
    best = min(range(len(population)), key=lambda i: scores[i].perplexity)
    return {"n_hat": population[best][0], "factors": space.factors(population[best]), **space.describe(population[best]),
            "perplexity": scores[best].perplexity, "history": history, "evaluated": len(evaluated),
            "abandoned": sum(not s.complete for s in evaluated.values()), "resumed_from_log": resumed}
