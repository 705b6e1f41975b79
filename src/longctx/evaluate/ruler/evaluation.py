"""The registered ``ruler`` evaluation: generate RULER's tasks at one length, answer them greedily,
score them as RULER does, and report the per-task scores and their average."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from longctx.evaluate.prompts import answer_prompts, words
from longctx.evaluate.registry import EvaluationError, register
from longctx.evaluate.ruler import haystack as hs
from longctx.evaluate.ruler.fitting import generate_samples, prompt_ids
from longctx.evaluate.ruler.qa import QABuilder
from longctx.evaluate.ruler.scoring import CREDIT, METRIC_BY_FAMILY, SCORERS, postprocess
from longctx.evaluate.ruler.tasks import (TASK_NAMES, TASKS, TEMPLATES, CommonWordsBuilder, FrequentWordsBuilder,
                                          NiahBuilder, VariableTrackingBuilder, max_new_tokens_for)

HAYSTACKS = ("corpus", "noise")
QA_FILES = {"qa_1": ("qa_squad_path", "SQuAD 2.0 dev JSON"), "qa_2": ("qa_hotpot_path", "HotpotQA dev distractor JSON")}

log = logging.getLogger(__name__)


def check_tasks(tasks) -> list[str]:
    """The task names asked for, in RULER's order; unknown names are an error."""
    names = list(TASK_NAMES if tasks is None else ([tasks] if isinstance(tasks, str) else tasks))
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise EvaluationError(f"ruler: unknown tasks {unknown} (known: {', '.join(TASK_NAMES)})" if unknown
                              else "ruler: no tasks asked for")
    return [t for t in TASK_NAMES if t in names]


def skip_reason(name: str, qa_paths: dict) -> str | None:
    """Why a task cannot run without more settings (the QA tasks without their local file), else None."""
    if name in QA_FILES and not qa_paths.get(QA_FILES[name][0]):
        key, what = QA_FILES[name]
        return f"no local QA file: set {key} to a {what} file (RULER downloads it; nothing is downloaded here)"
    return None


def make_builder(name: str, tokenizer, length: int, *, seed: int, haystack: str = "corpus", corpus=None,
                 budget: int | None = None, qa_paths: dict | None = None, chat: bool = False):
    """The sample builder of one task. Tasks that RULER runs on its essays use ``haystack``: the corpus
    words (``corpus``, a word list) or the noise sentence."""
    task = TASKS[name]
    args = dict(task.args)
    if task.family == "niah":
        if args["type_haystack"] == "essay" and haystack == "noise":
            args["type_haystack"] = "noise"
        return NiahBuilder(args, seed, corpus if args["type_haystack"] == "essay" else None)
    if task.family == "variable_tracking":
        return VariableTrackingBuilder(args, tokenizer, length, seed)
    budget = max_new_tokens_for(name) if budget is None else budget
    if task.family == "common_words_extraction":
        return CommonWordsBuilder(args, length, seed,
                                  fits=lambda s: len(prompt_ids(tokenizer, s, chat)) + budget <= length)
    if task.family == "freq_words_extraction":
        return FrequentWordsBuilder(args, length, budget, seed)
    key = QA_FILES[name][0]
    return QABuilder(args["dataset"], (qa_paths or {})[key], seed)


def uses_corpus(name: str, haystack: str) -> bool:
    """Whether a task reads the corpus words: RULER's essay tasks with ``haystack: corpus``."""
    return TASKS[name].args.get("type_haystack") == "essay" and haystack == "corpus"


def haystack_of(name: str, haystack: str) -> str:
    """What fills a task's prompt: corpus, noise, needle (distractor needles), words or documents."""
    kind = TASKS[name].args.get("type_haystack")
    if kind == "essay":
        return haystack
    return kind or {"qa": "documents"}.get(TASKS[name].family, "words")


def generate_task(name: str, tokenizer, length: int, *, samples: int = 4, seed: int = 1234, haystack: str = "corpus",
                  data_prefix=None, corpus=None, chat_template: bool = False, max_new_tokens=None,
                  qa_squad_path=None, qa_hotpot_path=None) -> list[dict]:
    """``samples`` samples of task ``name`` fitted to ``length`` tokens, each ``{"input", "answer_prefix",
    "outputs", "size", "prompt_tokens", ...}``; ``corpus`` (a word list) saves reading ``data_prefix``."""
    check_tasks([name])
    if haystack not in HAYSTACKS:
        raise EvaluationError(f"ruler: haystack must be one of {HAYSTACKS}, got {haystack!r}")
    budget = max_new_tokens_for(name, max_new_tokens)
    qa_paths = {"qa_squad_path": qa_squad_path, "qa_hotpot_path": qa_hotpot_path}
    reason = skip_reason(name, qa_paths)
    if reason:
        raise EvaluationError(f"ruler {name}: {reason}")
    if uses_corpus(name, haystack) and corpus is None:
        corpus = hs.corpus_words(data_prefix, tokenizer, length + 1)
    builder = make_builder(name, tokenizer, length, seed=seed, haystack=haystack, corpus=corpus, budget=budget,
                           qa_paths=qa_paths, chat=chat_template)
    return generate_samples(name, builder, tokenizer, length, samples, seed, budget, chat_template)


def min_length(tasks=None, max_new_tokens=None, qa_squad_path=None, qa_hotpot_path=None, **_) -> int:
    """A lower bound of the tokens the longest of the tasks' smallest prompts and answers take (a token a
    word at least, plus BOS), checked against the evaluation lengths before any job runs."""
    qa_paths = {"qa_squad_path": qa_squad_path, "qa_hotpot_path": qa_hotpot_path}
    bound = 0
    for name in check_tasks(tasks):
        if skip_reason(name, qa_paths):
            continue
        family = TASKS[name].family
        template, prefix = TEMPLATES[family]
        text = template + prefix
        if family in ("variable_tracking", "common_words_extraction"):
            text = text * 2  # the one-shot example repeats the template
        bound = max(bound, words(text) + max_new_tokens_for(name, max_new_tokens) + 1)
    return bound


@register("ruler", order=50, generates=True, reads_tokens=True, min_length=min_length)
def evaluate_ruler(model, tokenizer, length: int, *, tasks=None, samples=4, haystack="corpus", max_new_tokens=None,
                   qa_squad_path=None, qa_hotpot_path=None, chat_template=False, batch_size=16, batch_tokens=32768,
                   seed=1234, data_prefix=None, **_):
    """RULER at one length: ``samples`` samples of each task in ``tasks`` (the QA tasks only with
    their local file, else listed under ``skipped`` with the reason), greedy answers within each
    task's ``max_new_tokens``, RULER's per-task scores (0-100) and their average over the tasks
    that ran, first in ``metrics``. The settings are described in the package docstring."""
    started = time.time()
    names = check_tasks(tasks)
    if haystack not in HAYSTACKS:
        raise EvaluationError(f"ruler: haystack must be one of {HAYSTACKS}, got {haystack!r}")
    if int(samples) < 1:
        raise EvaluationError(f"ruler: samples must be at least 1, got {samples}")
    qa_paths = {"qa_squad_path": qa_squad_path, "qa_hotpot_path": qa_hotpot_path}
    skipped = {n: r for n in names if (r := skip_reason(n, qa_paths))}
    running = [n for n in names if n not in skipped]
    if not running:
        raise EvaluationError(f"ruler: none of the tasks can run: {skipped}")
    corpus = None
    if any(uses_corpus(n, haystack) for n in running):
        corpus = hs.corpus_words(data_prefix, tokenizer, length + 1)
    generated = {}
    for k, n in enumerate(running, 1):  # fitting samples to the length in model tokens: CPU work, logged
        generated[n] = generate_task(n, tokenizer, length, samples=int(samples), seed=seed, haystack=haystack,
                                     corpus=corpus, chat_template=chat_template, max_new_tokens=max_new_tokens,
                                     qa_squad_path=qa_squad_path, qa_hotpot_path=qa_hotpot_path)
        log.info("ruler@%d: generated %s (%d/%d tasks), %.0fs", length, n, k, len(running), time.time() - started)
    # one generation call per answer budget, so that tasks share batches
    by_budget = defaultdict(list)
    for n in running:
        by_budget[max_new_tokens_for(n, max_new_tokens)].extend(generated[n])
    answers = {}
    for budget, group in by_budget.items():
        prompts = [prompt_ids(tokenizer, s, chat_template) for s in group]
        for s, a in zip(group, answer_prompts(model, tokenizer, prompts, budget, batch_size=batch_size,
                                              batch_tokens=batch_tokens)):
            answers[(s["task"], s["index"])] = a
        log.info("ruler@%d: answered %d prompts with up to %d new tokens, %.0fs", length, len(group), budget,
                 time.time() - started)
    per_task, examples = {}, []
    for n in running:
        metric = METRIC_BY_FAMILY[TASKS[n].family]
        preds = [postprocess(answers[(n, s["index"])]) for s in generated[n]]
        refs = [s["outputs"] for s in generated[n]]
        per_task[n] = {"score": SCORERS[metric](preds, refs), "metric": metric, "samples": len(preds),
                       "max_new_tokens": max_new_tokens_for(n, max_new_tokens),
                       "haystack": haystack_of(n, haystack),
                       "prompt_tokens_mean": sum(s["prompt_tokens"] for s in generated[n]) / len(preds),
                       "nulls": sum(not p for p in preds)}
        examples += [{"task": n, "index": s["index"], "size": s["size"], "prompt_tokens": s["prompt_tokens"],
                      "outputs": s["outputs"], "answer": answers[(n, s["index"])],
                      "credit": CREDIT[metric](p, s["outputs"])} for s, p in zip(generated[n], preds)]
    scores = {n: per_task[n]["score"] for n in running}
    return {
        "eval": "ruler",
        "length": length,
        "metrics": {"average": sum(scores.values()) / len(scores), **scores},
        "tasks": per_task,
        "skipped": skipped,
        "haystack": haystack,
        "chat_template": bool(chat_template),
        "examples": examples,
        "seconds": time.time() - started,
    }
