"""The search's fitness: perplexity of the model at the task's length on fixed documents, made fast
(several candidates per forward, the LM head in chunks, early abandoning, compiled layers); LongRoPE2's
needle-driven perplexity beside it (only the answer tokens of planted needles, ``NeedleFitness``);
and ``run_search``, which puts a task, its fitness and the algorithm together."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch

from longctx import provenance
from longctx.models.kernels import compile_layers, sdpa_kernels
from longctx.models.loss import chunked_nll, window_nll
from longctx.search.evolution import Score, evolutionary_search
from longctx.search.space import SearchError
from longctx.search.tasks import SearchTask

log = logging.getLogger(__name__)


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
        device = next(model.parameters()).device
        self.windows = windows.to(device)
        self.documents, length = self.windows.shape
        self.rows = max(1, batch_tokens // length)
        self._positions = torch.arange(length, device=device)[None]
        self._probe = torch.zeros(1, dtype=next(model.parameters()).dtype, device=device)
        self._kernels = sdpa_backend
        sdpa_kernels(sdpa_backend, "search.sdpa_backend")  # an unknown kernel fails here, before any forward
        # compiled layers on CUDA only: on CPU compiling costs more than the short forwards it saves
        self.compiled = bool(compile) and device.type == "cuda"
        if self.compiled:
            compile_layers(model)
        self.forwards = 0
        self.tokens = 0

    def candidate_state(self, n_hat: int, factors: list[float]):
        """cos/sin [1, T, head_dim] of a candidate, exactly as the model's own rotary module makes them."""
        from longctx.rope import apply_to_model

        apply_to_model(self.model, "longrope", self.task.scale, self.task.rope_params(n_hat, factors))
        return self.decoder.rotary_emb(self._probe, self._positions)

    def score_rows(self, rows) -> list[float]:
        index = [j for _, j in rows]
        ids = self.windows[index]
        cos = torch.cat([state[0] for state, _ in rows])
        sin = torch.cat([state[1] for state, _ in rows])
        rotary = self.decoder.rotary_emb
        self.decoder.rotary_emb = _FixedTables(cos, sin)  # each row's candidate RoPE
        try:
            with torch.inference_mode(), sdpa_kernels(self._kernels, "search.sdpa_backend"):
                nll = self.row_nll(ids, index)
        finally:
            self.decoder.rotary_emb = rotary
        self.forwards += 1
        self.tokens += ids.numel()
        return nll

    def row_nll(self, ids: torch.Tensor, index: list[int]) -> list[float]:
        """Mean next-token NLL of each row of ``ids`` (rows ``index`` of the windows)."""
        sums, count = window_nll(self.model, ids, chunk_size=self.chunk_size)
        return [s / count for s in sums]


class NeedleFitness(PerplexityFitness):
    """LongRoPE2's needle-driven perplexity (Shang et al. 2025, section 3.2): the NLL of each row's
    answer tokens only (``answer_start[j]`` .. the row's end, ``longctx.search.needle``), then
    ``exp(mean over rows of each row's mean answer NLL)``. The same forwards, batching and early
    abandoning as ``PerplexityFitness`` (a row's answer NLL is >= 0 as well)."""

    def __init__(self, model, windows, answer_start, task: SearchTask, **kwargs):
        super().__init__(model, windows, task, **kwargs)
        starts = [int(x) for x in answer_start]
        if len(starts) != self.documents or not all(1 <= a < task.length for a in starts):
            raise SearchError(f"needle fitness: {len(starts)} answer starts for {self.documents} rows, each must lie "
                              f"in 1 .. {task.length - 1}")
        self.answer_start = starts

    def row_nll(self, ids: torch.Tensor, index: list[int]) -> list[float]:
        starts = [self.answer_start[j] for j in index]
        first = min(starts)  # the decoder runs on the whole rows; the head only from the first answer on
        hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state[:, first - 1 : -1]
        head = self.model.get_output_embeddings()
        out = []
        for b, start in enumerate(starts):
            targets = ids[b, first:].clone()
            targets[: start - first] = -100
            total, count = chunked_nll(hidden[b], head, targets, self.chunk_size)
            out.append(float(total) / count)
        return out


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
               chunk_size: int = 4096, answer_start=None) -> dict:
    """The whole search for ``task`` on ``model`` with the fitness windows [D, T]; returns ``task.record``.

    ``search.fitness: needle`` needs ``answer_start`` (the rows of ``longctx.search.needle``):
    LongRoPE2's needle-driven perplexity; ``perplexity`` (LongRoPE) scores every token."""
    kind = settings.get("fitness", "perplexity")
    if (kind == "needle") != (answer_start is not None):
        raise SearchError(f"config key 'search.fitness': {kind!r} with{'out' if answer_start is None else ''} "
                          f"needle rows")
    speed = {"batch_tokens": settings.get("batch_tokens", 32768), "chunk_size": chunk_size,
             "sdpa_backend": settings.get("sdpa_backend"), "compile": settings.get("compile", False)}
    if kind == "needle":
        fitness = NeedleFitness(model, windows, answer_start, task, **speed)
        documents = [("windows", windows), ("answer_start", torch.as_tensor(answer_start))]
    else:
        fitness = PerplexityFitness(model, windows, task, **speed)
        documents = [("windows", windows)]
    inputs = {"model": provenance.model_digest(model), "documents": provenance.tensors_digest(documents),
              "task": provenance.digest({k: v for k, v in vars(task).items() if k != "space"}),
              "fitness": provenance.digest({"chunk_size": chunk_size, **({"kind": kind} if kind != "perplexity" else {})})}
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
