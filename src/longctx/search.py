"""LongRoPE's evolutionary search for per-dimension rescale factors (Ding et al. 2024, Algorithm 1).

An individual is ``(n_hat, lambda_0 .. lambda_{d/2-1})`` on a 0.01 grid in [1, lambda_max],
monotone non-decreasing. The first population is PI, NTK and YaRN's factors plus mutations of
them; each iteration keeps the best ``parents`` and adds ``mutations`` mutated and ``crossovers``
crossed-over children, never evaluating one candidate twice. Fitness is perplexity at the target
length on validation documents (lower is better).

Every evaluated candidate is appended to a log; a rerun replays the same seeded algorithm and
takes fitness from the log instead of recomputing, so a killed search resumes and ends with the
same result as one that was never interrupted. The log's first line holds the fingerprint of what
determines the scores (model, fitness documents, task, settings, seed; ``longctx.provenance``): a
log made from anything else is set aside, never mixed in.

Early abandoning: a candidate's documents are scored one group at a time, and once the part
already scored shows the candidate cannot enter the top ``parents`` of its population, the rest
is skipped (see ``evolutionary_search`` for why the survivors are then exactly the same).

A search is described by a ``SearchTask`` (length, space, seeds, and how a candidate becomes
LongRoPE parameters: plain, secondary - multiplying the factors a model was fine-tuned with - or
a short-context recovery set, see ``longctx.progressive``) and evaluated by ``PerplexityFitness``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from longctx import provenance
from longctx.io import ArtifactError
from longctx.rope import RopeGeometry, build_rope_parameters, inverse_frequencies

log = logging.getLogger(__name__)

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
    """lambda_i = theta_i / theta_i' of PI, NTK-aware and YaRN at this scale (the initial population)."""
    theta = geometry.theta()
    out = {}
    for method in ("pi", "ntk", "yarn"):
        rp = build_rope_parameters(method, scale, {}, geometry)
        out[method] = (theta / inverse_frequencies(rp, geometry.head_dim, int(scale * geometry.original_context))).tolist()
    return out


# --- what one search looks for --------------------------------------------------------------------


@dataclass
class SearchTask:
    """One search: where it scores candidates and how a candidate becomes LongRoPE parameters.

    ``scale`` is the LongRoPE scale the model runs at (it sets mscale, the cos/sin scale), which for
    a short-context recovery set is the final model's scale, not ``length / L``.

    - plain: the candidate's factors are the model's factors;
    - secondary (``base_factors`` set): the model was fine-tuned with ``base_factors``, and the
      candidate ``lambda'`` multiplies them element-wise (``lambda_ft * lambda'``);
    - recovery (``long_set`` set): the candidate is the factor set for sequences of at most
      ``length`` tokens, the long set serves longer ones.
    """

    kind: str  # "search", "secondary" or "recovery"
    length: int
    scale: float
    space: SearchSpace
    seeds: dict[str, list[float]]
    params: dict = field(default_factory=dict)  # other longrope parameters (mscale, monotone, ...)
    base_factors: list[float] | None = None
    long_set: dict | None = None  # {"factors": [...], "n_hat": k}
    length_scale: float | None = None  # length / L when it differs from ``scale`` (recovery)

    def factors_used(self, factors: list[float]) -> list[float]:
        if self.base_factors is None:
            return list(factors)
        return [round(a * b, 10) for a, b in zip(self.base_factors, factors)]

    def rope_params(self, n_hat: int, factors: list[float]) -> dict:
        used = self.factors_used(factors)
        if self.long_set is not None:
            return {**self.params, "factors": None, "n_hat": 0, "factor_sets": [
                {"max_length": self.length, "factors": used, "n_hat": n_hat},
                {"max_length": None, "factors": list(self.long_set["factors"]), "n_hat": self.long_set["n_hat"]},
            ]}
        return {**self.params, "factors": used, "n_hat": n_hat}

    def record(self, result: dict) -> dict:
        """What ``factors.json`` holds: the search (history, best, perplexity) and the RoPE it gives."""
        out = {"method": "longrope", "kind": self.kind, "scale": self.length_scale or self.scale,
               "rope_scale": self.scale, "length": self.length,
               "lambda_max": self.space.lambda_max, "seeds": self.seeds, **result,
               "factors": self.factors_used(result["factors"]),
               "rope_params": self.rope_params(result["n_hat"], result["factors"])}
        if self.base_factors is not None:
            out["relative_factors"] = result["factors"]
            out["base_factors"] = list(self.base_factors)
        return out


def plain_task(geometry: RopeGeometry, scale: float, settings: dict, params: dict | None = None) -> SearchTask:
    """Search at ``scale x L`` on a model that was never fine-tuned with LongRoPE factors."""
    return SearchTask("search", int(round(scale * geometry.original_context)), float(scale),
                      space_for(geometry, scale, settings), seed_factors(geometry, scale), dict(params or {}))


def secondary_task(geometry: RopeGeometry, scale: float, finetuned_scale: float, base_factors: list[float],
                   settings: dict, params: dict | None = None) -> SearchTask:
    """Search ``lambda'`` at ``scale x L`` on a model fine-tuned at ``finetuned_scale`` with ``base_factors``.

    The space and the PI / NTK / YaRN seeds are those of the relative extension ``scale /
    finetuned_scale`` of a model whose context is the fine-tuned length.
    """
    if len(base_factors) != geometry.n_pairs:
        raise SearchError(f"secondary search: {len(base_factors)} base factors, the model needs {geometry.n_pairs}")
    relative = scale / finetuned_scale
    if relative <= 1:
        raise SearchError(f"secondary search: scale {scale} must be above the fine-tuned scale {finetuned_scale}")
    tuned = RopeGeometry(geometry.head_dim, geometry.base, int(round(finetuned_scale * geometry.original_context)))
    return SearchTask("secondary", int(round(scale * geometry.original_context)), float(scale),
                      space_for(geometry, relative, settings), seed_factors(tuned, relative), dict(params or {}),
                      base_factors=[float(x) for x in base_factors])


# --- the algorithm --------------------------------------------------------------------------------


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
    scores = score_population(population)
    history = []
    for it in range(settings["iterations"]):
        order = sorted(range(len(population)), key=lambda i: scores[i].perplexity)
        parents = [population[i] for i in order[:n_parents]]
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
    return {"n_hat": population[best][0], "factors": space.factors(population[best]),
            "perplexity": scores[best].perplexity, "history": history, "evaluated": len(evaluated),
            "abandoned": sum(not s.complete for s in evaluated.values()), "resumed_from_log": resumed}


# --- the fitness: perplexity of a model on fixed documents ----------------------------------------


class _FixedTables(torch.nn.Module):
    """Stands in for a model's rotary module during one forward: cos/sin per batch row, precomputed,
    so rows of one forward can carry different candidates' RoPE."""

    def __init__(self, cos, sin):
        super().__init__()
        self.cos, self.sin = cos, sin

    def forward(self, x, position_ids=None, *args, **kwargs):
        if x.shape[0] != self.cos.shape[0] or x.shape[1] != self.cos.shape[1]:
            raise RuntimeError(f"rope tables for {tuple(self.cos.shape[:2])} rows x tokens, forward has {tuple(x.shape[:2])}")
        return self.cos, self.sin


class DocumentFitness:
    """Perplexity over D fixed documents, ``exp(mean over documents of each one's mean NLL)``, with
    early abandoning; subclasses say how rows (a candidate on a document) are scored.

    ``rows`` is how many rows one ``score_rows`` call (one forward) takes. When it holds all D
    documents of several candidates, ``batch`` candidates share a call and each is finished in it.
    When it holds fewer than D, a candidate's documents are scored in fixed groups of ``rows``,
    and a ``cutoff`` lets it stop early: per-token NLL is >= 0, so ``exp(sum of the documents'
    mean NLL so far / D)`` is a lower bound of the final perplexity. The groups do not depend on
    the cutoff, so every number computed is the same with or without abandoning.
    """

    documents: int
    rows: int

    def candidate_state(self, n_hat: int, factors: list[float]):
        """Whatever ``score_rows`` needs to know of a candidate (e.g. its RoPE tables)."""
        raise NotImplementedError

    def score_rows(self, rows: list[tuple]) -> list[float]:
        """Mean next-token NLL of each ``(candidate state, document index)`` row, in one call."""
        raise NotImplementedError

    @property
    def batch(self) -> int:
        return self.rows // self.documents if self.rows >= self.documents else 1

    @property
    def groups(self) -> list[list[int]]:
        return [list(range(a, min(a + self.rows, self.documents))) for a in range(0, self.documents, self.rows)]

    def evaluate(self, candidates, cutoff=None) -> list[Score]:
        D = self.documents
        if len(candidates) > 1 and self.batch > 1:
            # every document of every candidate in one call; nothing to abandon
            states = [self.candidate_state(n_hat, f) for n_hat, f in candidates]
            nll = self.score_rows([(state, j) for state in states for j in range(D)])
            return [self._score(nll[k * D : (k + 1) * D]) for k in range(len(candidates))]
        return [self._evaluate_one(n_hat, f, cutoff) for n_hat, f in candidates]

    def _evaluate_one(self, n_hat, factors, cutoff) -> Score:
        state = self.candidate_state(n_hat, factors)
        nll: list[float] = []
        for group in self.groups:
            nll += self.score_rows([(state, j) for j in group])
            if cutoff is not None and len(nll) < self.documents:
                bound = self._score(nll)
                if bound.perplexity >= cutoff:
                    return bound
        return self._score(nll)

    def _score(self, nll: list[float]) -> Score:
        total = 0.0
        for x in nll:  # in document order, so a partial sum never exceeds the full one
            total += x
        value = math.exp(total / self.documents) if math.isfinite(total) else float("inf")
        return Score(value, complete=len(nll) == self.documents, documents=len(nll))


class PerplexityFitness(DocumentFitness):
    """Perplexity at the task's length on fixed token windows: the search's fitness, made fast.

    The windows ``[D, T]`` are tokenized and moved to the device once; every candidate's RoPE goes
    through the registry (``apply_to_model``), and its cos/sin tables are handed to the forward
    directly, so one forward can carry several candidates (``batch_tokens`` bounds the tokens per
    forward). The LM head and loss run in chunks of ``chunk_size`` tokens (full logits never
    exist); attention is the model's (SDPA by default), optionally pinned to one SDPA backend;
    ``compile`` compiles the decoder layers (CUDA). Early abandoning as in ``DocumentFitness``.
    """

    def __init__(self, model, windows, task: SearchTask, batch_tokens: int = 32768, chunk_size: int = 4096,
                 sdpa_backend: str | None = None, compile: bool = False):
        if windows.dim() != 2 or windows.shape[1] != task.length:
            raise SearchError(f"fitness windows must be [documents, {task.length}] tokens, got {tuple(windows.shape)}")
        self.model, self.task, self.chunk_size = model, task, chunk_size
        self.decoder = model.get_decoder()
        if not hasattr(self.decoder, "rotary_emb"):
            raise SearchError(f"{type(model).__name__}: no decoder-level rotary module to hand candidates' RoPE to")
        self.head = model.get_output_embeddings()
        device = next(model.parameters()).device
        self.windows = windows.to(device)
        self.documents, length = self.windows.shape
        self.rows = max(1, batch_tokens // length)
        self._positions = torch.arange(length, device=device)[None]
        self._probe = torch.zeros(1, dtype=next(model.parameters()).dtype, device=device)
        self._backend = _sdpa_backend(sdpa_backend)
        # compiled layers on CUDA only: on CPU compiling costs more than the short forwards it saves
        self.compiled = bool(compile) and device.type == "cuda"
        if self.compiled:
            from longctx.model import compile_layers

            compile_layers(model)
        self.forwards = 0
        self.tokens = 0

    def candidate_state(self, n_hat: int, factors: list[float]):
        """cos/sin [1, T, head_dim] of a candidate, exactly as the model's own rotary module makes them."""
        from longctx.rope import apply_to_model

        apply_to_model(self.model, "longrope", self.task.scale, self.task.rope_params(n_hat, factors))
        return self.decoder.rotary_emb(self._probe, self._positions)

    def score_rows(self, rows) -> list[float]:
        from longctx.loss import chunked_nll

        ids = self.windows[[j for _, j in rows]]
        cos = torch.cat([state[0] for state, _ in rows])
        sin = torch.cat([state[1] for state, _ in rows])
        rotary = self.decoder.rotary_emb
        self.decoder.rotary_emb = _FixedTables(cos, sin)
        try:
            with torch.inference_mode(), self._backend():
                hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
                targets = ids[:, 1:]
                sums = torch.stack([chunked_nll(hidden[r], self.head, targets[r], self.chunk_size)[0]
                                    for r in range(ids.shape[0])])
        finally:
            self.decoder.rotary_emb = rotary
        self.forwards += 1
        self.tokens += ids.numel()
        return (sums.double() / targets.shape[1]).tolist()


def _sdpa_backend(name: str | None):
    """A context manager pinning SDPA to one backend (``flash``, ``efficient``, ``cudnn``, ``math``), or a no-op."""
    import contextlib

    if name in (None, "auto"):
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if name not in backends:
        raise SearchError(f"search.sdpa_backend: unknown SDPA backend {name!r}; known: auto, {', '.join(backends)}")
    return lambda: sdpa_kernel(backends[name])


def pick_documents(lengths: list[int], length: int, count: int, seed: int, where: str) -> list[int]:
    """``count`` random documents (seeded) of at least ``length`` tokens, in file order.

    Too few is an error naming the file and the key, before any model is loaded."""
    eligible = [i for i, n in enumerate(lengths) if n >= length]
    if len(eligible) < count:
        raise SearchError(
            f"{where}: only {len(eligible)} of {len(lengths)} documents have at least {length} tokens, the search "
            f"length; search.documents asks for {count} (use a corpus with longer documents, or lower search.documents)")
    return sorted(random.Random(seed).sample(eligible, count))


def run_search(model, windows, task: SearchTask, settings: dict, seed: int, log_path, progress=None,
               chunk_size: int = 4096) -> dict:
    """The whole search for ``task`` on ``model`` with the fitness windows [D, T]; returns ``task.record``."""
    fitness = PerplexityFitness(model, windows, task, batch_tokens=settings.get("batch_tokens", 32768),
                                chunk_size=chunk_size, sdpa_backend=settings.get("sdpa_backend"),
                                compile=settings.get("compile", False))
    inputs = {"model": provenance.model_digest(model), "documents": provenance.tensors_digest([("windows", windows)]),
              "task": provenance.digest({k: v for k, v in vars(task).items() if k != "space"}),
              "fitness": provenance.digest({"chunk_size": chunk_size})}
    started = time.time()
    result = evolutionary_search(fitness, task.space, list(task.seeds.values()), settings, seed, Path(log_path),
                                 progress=progress, early_abandon=settings.get("early_abandon", True),
                                 fitness_inputs=inputs)
    seconds = time.time() - started
    fresh = result["evaluated"] - result["resumed_from_log"]
    result["timing"] = {"seconds": seconds, "forwards": fitness.forwards, "tokens": fitness.tokens,
                        "candidates_per_minute": 60 * fresh / seconds if seconds > 0 else None,
                        "candidates_per_forward": fitness.batch, "rows_per_forward": fitness.rows}
    return task.record(result)
