"""LongRoPE2's critical-dimension-aware search space (Shang et al. 2025, arXiv 2502.20082).

Pairs are indexed i = 0 .. d/2-1 (the paper's "cosine dimensions"). The *theoretical critical
dimension* is the first pair whose period 2 pi / theta_i does not fit in the original context L
(paper eq. 7, halved because the paper counts pairs there: 31 for Phi3-mini at 2k, 35 for
LLaMA3-8B at 8k)::

    d_tcd = ceil(d/2 * log_b(L / (2 pi)))

The *real* critical dimension d_rcd is found by the search (paper section 3.2, Algorithms 1-2):

- an individual is (d_rcd, lambda_{d_rcd} .. lambda_{d/2-1}): the factors from d_rcd on are
  searched, on the grid, monotone, in [s, 2 s] (the paper's search space SP);
- the pairs below d_rcd get NTK-style factors from the base that puts pair d_rcd at
  lambda_{d_rcd}: b' = b * lambda_{d_rcd}^(d / (2 d_rcd)), so lambda_i = (b'/b)^(2i/d) =
  lambda_{d_rcd}^(i / d_rcd) (Algorithm 2, lines 7-8);
- the first population holds one individual per candidate d_rcd, from the pair with 10
  theoretical periods in L (d10_tcd) to d_tcd, each with every searched factor equal to one
  random integer in [s, 2 s] (Algorithm 1); mutation moves only the searched factors and keeps
  d_rcd, so selection finds it.

Where the first author's code (github.com/J-shang/LongRoPE, evolution/search.py) differs, the
config picks (``search.critical_dim``) and the paper is the default: the code's theoretical
critical dimension is one lower (``formula: code``), it fixes d_rcd instead of searching it
(``index``: the LLaMA3-8B script passes 33) and bounds the searched factors by a scale passed
on its command line (``lambda_max_ratio``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from longctx.rope import RopeGeometry
from longctx.search.space import Individual, SearchError, SearchSpace, _mutate_grid, _mutate_n_hat

FORMULAS = ("paper", "code")


def critical_dimension(geometry: RopeGeometry, periods: float = 1.0, formula: str = "paper") -> int:
    """The first pair index i whose rotation completes fewer than ``periods`` full periods in L.

    ``paper``: ceil(d/2 * log_b(L / (2 pi periods))) (eq. 7; Algorithm 1 line 2 with periods = 10);
    ``code``: one less, as the released search computes its default critical dimension.
    """
    if formula not in FORMULAS:
        raise SearchError(f"config key 'search.critical_dim.formula': {formula!r} is not one of {FORMULAS}")
    d, b, L = geometry.head_dim, geometry.base, geometry.original_context
    index = math.ceil(d / 2 * math.log(L / (2 * math.pi * periods)) / math.log(b))
    if formula == "code":
        index -= 1
    return min(max(index, 0), geometry.n_pairs - 1)


def ntk_below(lambda_critical: float, critical: int) -> list[float]:
    """lambda_i = lambda_{d_rcd}^(i / d_rcd), i < d_rcd: NTK scaling with the base that puts pair
    d_rcd at ``lambda_critical`` (paper Algorithm 2, lines 7-8)."""
    return [float(lambda_critical) ** (i / critical) for i in range(critical)]


@dataclass
class CriticalSpace(SearchSpace):
    """Individuals ``(n_hat, grid values of pairs d_rcd .. d/2-1)``; d_rcd = d/2 - their number.

    ``lambda_min`` / ``lambda_max`` bound the searched factors (paper: s and 2 s); ``candidates``
    are the d_rcd values of the first population; ``theoretical`` is d_tcd (recorded).
    """

    candidates: tuple = ()
    theoretical: int = 0
    formula: str = "paper"

    def critical(self, ind: Individual) -> int:
        return self.n_pairs - len(ind[1])

    def factors(self, ind: Individual) -> list[float]:
        searched = [round(k * self.step, 10) for k in ind[1]]
        return [round(x, 10) for x in ntk_below(searched[0], self.critical(ind))] + searched

    def is_valid(self, ind: Individual) -> bool:
        lam = ind[1]
        lo, hi = round(self.lambda_min / self.step), round(self.lambda_max / self.step)
        return (ind[0] in self.n_hat_choices and self.critical(ind) in self.candidates
                and all(lo <= x <= hi for x in lam) and all(a <= b for a, b in zip(lam, lam[1:])))

    def initial(self, seeds: list[list[float]], rng: random.Random) -> list[Individual]:
        """Algorithm 1: per candidate d_rcd, every searched factor equal to one random integer in
        [lambda_min, lambda_max] (a random grid value when no integer lies there). The PI, NTK and
        YaRN seeds are not individuals of this space; they stay in the record for comparison."""
        lo, hi = round(self.lambda_min / self.step), round(self.lambda_max / self.step)
        whole = list(range(math.ceil(self.lambda_min), math.floor(self.lambda_max) + 1))
        out = []
        for critical in self.candidates:
            value = round(rng.choice(whole) / self.step) if whole else rng.randint(lo, hi)
            out.append((0, (value,) * (self.n_pairs - critical)))
        return out

    def mutate(self, ind: Individual, rng: random.Random, prob: float) -> Individual:
        """Algorithm 2: the searched factors move as in LongRoPE (monotone, within the bounds);
        d_rcd stays, and the factors below it follow lambda_{d_rcd}."""
        lo, hi = round(self.lambda_min / self.step), round(self.lambda_max / self.step)
        lam = _mutate_grid(list(ind[1]), lo, hi, rng, prob)
        return (_mutate_n_hat(ind[0], self.n_hat_choices, rng, prob), lam)

    def crossover(self, a: Individual, b: Individual, rng: random.Random, prob: float) -> Individual:
        """The child's d_rcd is the other parent's with probability ``prob``; each of its searched
        pairs takes the other parent's value with probability ``prob`` where that parent searched
        the pair too (below its own d_rcd a parent's factor is derived, not a gene)."""
        ca, cb = self.critical(a), self.critical(b)
        critical = cb if rng.random() < prob else ca
        lam = []
        for i in range(critical, self.n_pairs):
            mine = a[1][i - ca] if i >= ca else None
            other = b[1][i - cb] if i >= cb else None
            take_other = other is not None and (mine is None or rng.random() < prob)
            lam.append(other if take_other else mine)
        n_hat = b[0] if rng.random() < prob else a[0]
        return (n_hat, tuple(lam))

    def describe(self, ind: Individual) -> dict:
        return {"critical_dim": self.critical(ind)}

    def record(self) -> dict:
        """What factors.json says of the critical dimension besides the one found."""
        return {"theoretical": self.theoretical, "candidates": list(self.candidates), "formula": self.formula,
                "lambda_bounds": [self.lambda_min, self.lambda_max]}


def critical_space(geometry: RopeGeometry, scale: float, settings: dict) -> CriticalSpace:
    """LongRoPE2's space at ``scale`` from ``settings['critical_dim']`` (``formula``, ``index``,
    ``lowest_periods``, ``lambda_max_ratio``) and the grid step and n_hat choices of ``settings``."""
    cd = settings["critical_dim"]
    theoretical = critical_dimension(geometry, 1.0, cd["formula"])
    if cd["index"] is not None:
        if not 0 <= cd["index"] < geometry.n_pairs:
            raise SearchError(f"config key 'search.critical_dim.index': {cd['index']} is not a pair index of a head "
                              f"of dimension {geometry.head_dim} (0 .. {geometry.n_pairs - 1})")
        candidates = (int(cd["index"]),)
    else:
        lowest = critical_dimension(geometry, float(cd["lowest_periods"]), cd["formula"])
        candidates = tuple(range(min(lowest, theoretical), theoretical + 1))
    hi = float(cd["lambda_max_ratio"]) * scale
    if hi < scale:
        raise SearchError(f"config key 'search.critical_dim.lambda_max_ratio': {cd['lambda_max_ratio']} puts the "
                          f"searched factors' upper bound below the scale {scale:g} (their lower bound, eq. 10)")
    return CriticalSpace(geometry.n_pairs, float(scale), hi, settings["step"], tuple(settings["n_hat_choices"]),
                         candidates=candidates, theoretical=theoretical, formula=cd["formula"])
