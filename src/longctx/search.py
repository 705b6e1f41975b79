"""LongRoPE's evolutionary search for per-dimension rescale factors (Ding et al. 2024, Algorithm 1).

An individual is ``(n_hat, lambda_0 .. lambda_{d/2-1})`` on a 0.01 grid in [1, lambda_max],
monotone non-decreasing. The first population is PI, NTK and YaRN's factors plus mutations of
them; each iteration keeps the best ``parents`` and adds ``mutations`` mutated and ``crossovers``
crossed-over children, never evaluating one candidate twice. Fitness is perplexity at the target
length on validation documents (lower is better).

Every evaluated candidate is appended to a log; a rerun replays the same seeded algorithm and
takes fitness from the log instead of recomputing, so a killed search resumes and ends with the
same result as one that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from longctx.rope import RopeGeometry, build_rope_parameters, inverse_frequencies

log = logging.getLogger(__name__)

Individual = tuple  # (n_hat, (lambda_0, ..., lambda_{d/2-1})) with lambdas as integer grid steps


@dataclass
class SearchSpace:
    n_pairs: int
    lambda_min: float
    lambda_max: float
    step: float
    n_hat_choices: tuple

    def to_grid(self, x: float) -> int:
        lo, hi = round(self.lambda_min / self.step), round(self.lambda_max / self.step)
        return min(max(round(x / self.step), lo), hi)

    def factors(self, ind: Individual) -> list[float]:
        return [round(k * self.step, 10) for k in ind[1]]

    def is_valid(self, ind: Individual) -> bool:
        lam = ind[1]
        lo, hi = round(self.lambda_min / self.step), round(self.lambda_max / self.step)
        return (ind[0] in self.n_hat_choices and len(lam) == self.n_pairs
                and all(lo <= x <= hi for x in lam) and all(a <= b for a, b in zip(lam, lam[1:])))


def space_for(geometry: RopeGeometry, scale: float, settings: dict) -> SearchSpace:
    upper = 1 + scale if settings["lambda_max_plus_one"] else settings["lambda_max_ratio"] * scale
    return SearchSpace(geometry.n_pairs, 1.0, upper, settings["step"], tuple(settings["n_hat_choices"]))


def seed_factors(geometry: RopeGeometry, scale: float) -> dict[str, list[float]]:
    """lambda_i = theta_i / theta_i' of PI, NTK-aware and YaRN at this scale (the initial population)."""
    theta = geometry.theta()
    out = {}
    for method in ("pi", "ntk", "yarn"):
        rp = build_rope_parameters(method, scale, {}, geometry)
        out[method] = (theta / inverse_frequencies(rp, geometry.head_dim, int(scale * geometry.original_context))).tolist()
    return out


def _monotone(grid: list[int]) -> tuple:
    out, top = [], grid[0]
    for x in grid:
        top = max(top, x)
        out.append(top)
    return tuple(out)


def mutate(ind: Individual, space: SearchSpace, rng: random.Random, prob: float) -> Individual:
    """Each lambda_i moves with probability ``prob`` to a grid value between its neighbours."""
    lam = list(ind[1])
    lo, hi = round(space.lambda_min / space.step), round(space.lambda_max / space.step)
    for i in range(len(lam)):
        if rng.random() < prob:
            left = lam[i - 1] if i > 0 else lo
            right = lam[i + 1] if i + 1 < len(lam) else hi
            lam[i] = rng.randint(left, right)
    n_hat = rng.choice(space.n_hat_choices) if rng.random() < prob else ind[0]
    return (n_hat, tuple(lam))


def crossover(a: Individual, b: Individual, rng: random.Random, prob: float) -> Individual:
    """Per dimension, take the other parent's value with probability ``prob``."""
    lam = tuple(y if rng.random() < prob else x for x, y in zip(a[1], b[1]))
    n_hat = b[0] if rng.random() < prob else a[0]
    return (n_hat, lam)


class FitnessLog:
    """Append-only record of evaluated candidates; what makes a search resumable."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.known: dict[str, float] = {}
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                # a kill cut the last line: drop it, so later records start on a line of their own
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text)
            for line in text.splitlines():
                row = json.loads(line)
                if row.get("type") == "candidate":
                    self.known[row["key"]] = row["perplexity"]

    def record(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def key_of(ind: Individual) -> str:
    return f"{ind[0]}|" + ",".join(map(str, ind[1]))


def evolutionary_search(fitness: Callable[[int, list[float]], float], space: SearchSpace, seeds: list[list[float]],
                        settings: dict, seed: int, log_path: Path, progress: Callable | None = None) -> dict:
    """Run Algorithm 1; ``fitness(n_hat, factors) -> perplexity``. Returns the best and the history."""
    rng = random.Random(seed)
    book = FitnessLog(log_path)
    resumed = len(book.known)
    evaluated: dict[str, float] = {}
    started = time.time()

    def evaluate(ind: Individual) -> float:
        k = key_of(ind)
        if k in evaluated:
            return evaluated[k]
        assert space.is_valid(ind), f"invalid candidate {k}"
        if k in book.known:
            value = book.known[k]
        else:
            value = float(fitness(ind[0], space.factors(ind)))
            if not math.isfinite(value):
                value = float("inf")
            book.record({"type": "candidate", "key": k, "n_hat": ind[0], "factors": space.factors(ind),
                         "perplexity": value})
        evaluated[k] = value
        return value

    def fresh(make) -> Individual | None:
        for _ in range(100):  # a new, valid candidate, never seen before
            ind = make()
            if space.is_valid(ind) and key_of(ind) not in evaluated and ind not in pending:
                return ind
        return None

    seeded = [(0, _monotone([space.to_grid(x) for x in f])) for f in seeds]
    population: list[Individual] = []
    for ind in seeded:
        if ind not in population:
            population.append(ind)
    pending = population  # `fresh` must not propose a member of the population being built
    while len(population) < settings["population"]:
        ind = fresh(lambda: mutate(rng.choice(seeded), space, rng, settings["mutation_prob"]))
        if ind is None:
            break
        population.append(ind)
    scores = [evaluate(ind) for ind in population]
    history = []
    for it in range(settings["iterations"]):
        order = sorted(range(len(population)), key=lambda i: scores[i])
        parents = [population[i] for i in order[: settings["parents"]]]
        pending = []
        for _ in range(settings["mutations"]):
            ind = fresh(lambda: mutate(rng.choice(parents), space, rng, settings["mutation_prob"]))
            if ind is not None:
                pending.append(ind)
        for _ in range(settings["crossovers"]):
            if len(parents) < 2:
                break
            ind = fresh(lambda: crossover(*rng.sample(parents, 2), rng, settings["crossover_prob"]))
            if ind is not None:
                pending.append(ind)
        population = parents + pending
        scores = [evaluate(ind) for ind in population]
        best = min(range(len(population)), key=lambda i: scores[i])
        finite = [s for s in scores if math.isfinite(s)]
        row = {"iteration": it + 1, "best_perplexity": scores[best],
               "mean_perplexity": sum(finite) / len(finite) if finite else None,
               "evaluated": len(evaluated), "best_n_hat": population[best][0],
               "best_factors": space.factors(population[best]), "seconds": time.time() - started}
        history.append(row)
        log.info("search iteration %d/%d: best ppl %.4f, mean %.4f, %d candidates evaluated (%d from log), %.0fs",
                 it + 1, settings["iterations"], row["best_perplexity"], row["mean_perplexity"] or float("nan"),
                 len(evaluated), resumed, row["seconds"])
        if progress is not None:
            progress(row)
    best = min(range(len(population)), key=lambda i: scores[i])
    return {"n_hat": population[best][0], "factors": space.factors(population[best]),
            "perplexity": scores[best], "history": history, "evaluated": len(evaluated),
            "resumed_from_log": resumed}
