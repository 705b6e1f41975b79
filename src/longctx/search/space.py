"""The search space of LongRoPE's Algorithm 1 and the settings in force at a length.

An individual is ``(n_hat, lambda_0 .. lambda_{d/2-1})`` on a 0.01 grid in [1, lambda_max],
monotone non-decreasing; the first population holds PI, NTK-aware and YaRN's factors
(``seed_factors``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from longctx.rope import RopeGeometry, build_rope_parameters, inverse_frequencies

Individual = tuple  # (n_hat, (lambda_0, ..., lambda_{d/2-1})) with lambdas as integer grid steps


class SearchError(ValueError):
    """A search cannot run as configured; the message names the config key or file."""


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

    # the genetic operators of Algorithm 1; a space with another shape of individual overrides them

    def initial(self, seeds: list[list[float]], rng: random.Random) -> list[Individual]:
        """The first individuals: each seed on the grid, made monotone, with n_hat 0."""
        return [(0, _monotone([self.to_grid(x) for x in f])) for f in seeds]

    def mutate(self, ind: Individual, rng: random.Random, prob: float) -> Individual:
        """Each lambda_i moves with probability ``prob`` to a grid value between its neighbours."""
        lo, hi = round(self.lambda_min / self.step), round(self.lambda_max / self.step)
        lam = _mutate_grid(list(ind[1]), lo, hi, rng, prob)
        return (_mutate_n_hat(ind[0], self.n_hat_choices, rng, prob), lam)

    def crossover(self, a: Individual, b: Individual, rng: random.Random, prob: float) -> Individual:
        """Per dimension, take the other parent's value with probability ``prob``."""
        return crossover_grid(a, b, rng, prob)

    def describe(self, ind: Individual) -> dict:
        """What a result records of an individual beyond its factors and n_hat."""
        return {}


def _monotone(grid: list[int]) -> tuple:
    out, top = [], grid[0]
    for x in grid:
        top = max(top, x)
        out.append(top)
    return tuple(out)


def _mutate_grid(lam: list[int], lo: int, hi: int, rng: random.Random, prob: float) -> tuple:
    for i in range(len(lam)):
        if rng.random() < prob:
            left = lam[i - 1] if i > 0 else lo
            right = lam[i + 1] if i + 1 < len(lam) else hi
            lam[i] = rng.randint(left, right)
    return tuple(lam)


def _mutate_n_hat(n_hat: int, choices: tuple, rng: random.Random, prob: float) -> int:
    # drawn after the factors, as in every search this package ran before (the same seeded draws)
    return rng.choice(choices) if rng.random() < prob else n_hat


def crossover_grid(a: Individual, b: Individual, rng: random.Random, prob: float) -> Individual:
    """Per dimension, take the other parent's value with probability ``prob``; n_hat likewise."""
    lam = tuple(y if rng.random() < prob else x for x, y in zip(a[1], b[1]))
    n_hat = b[0] if rng.random() < prob else a[0]
    return (n_hat, lam)


def space_for(geometry: RopeGeometry, scale: float, settings: dict, lambda_max: float | None = None) -> SearchSpace:
    """lambda_i in [1, 1.25 s] (paper) or [1, 1 + s] (released code); ``lambda_max`` overrides the bound."""
    if lambda_max is None:
        lambda_max = 1 + scale if settings["lambda_max_plus_one"] else settings["lambda_max_ratio"] * scale
    return SearchSpace(geometry.n_pairs, 1.0, float(lambda_max), settings["step"], tuple(settings["n_hat_choices"]))


def settings_at(settings: dict, length: int) -> dict:
    """The search settings in force at a target length.

    Above ``large_length`` tokens (paper: 512k) the paper halves P, N1 and N2 and scores 3 documents;
    the parents are halved too, keeping the paper's P = parents + N1 + N2.
    """
    threshold = settings.get("large_length")
    if threshold is None or length <= threshold:
        return dict(settings)
    out = dict(settings)
    for key, least in (("population", 4), ("mutations", 0), ("crossovers", 0), ("parents", 2)):
        out[key] = max(least, settings[key] // 2)
    out["parents"] = min(out["parents"], out["population"])
    out["documents"] = settings["large_documents"]
    return out


def seed_factors(geometry: RopeGeometry, scale: float) -> dict[str, list[float]]:
    """lambda_i = theta_i / theta_i' of PI, NTK-aware and YaRN at this scale (the initial population);
    YaRN with its defaults for the geometry's model family (the released code's ramp and betas)."""
    theta = geometry.theta()
    out = {}
    for method in ("pi", "ntk", "yarn"):
        rp = build_rope_parameters(method, scale, {}, geometry)
        out[method] = (theta / inverse_frequencies(rp, geometry.head_dim, int(scale * geometry.original_context))).tolist()
    return out
