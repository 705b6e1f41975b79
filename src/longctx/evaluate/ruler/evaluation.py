"""Generating RULER's tasks at one length: which builder each task uses, the QA files, the corpus
haystack, and a lower bound of the length the tasks need."""

from __future__ import annotations

from longctx.evaluate.common import words
from longctx.evaluate.registry import EvaluationError
from longctx.evaluate.ruler import haystack as hs
from longctx.evaluate.ruler.fitting import generate_samples, prompt_ids
from longctx.evaluate.ruler.qa import QABuilder
from longctx.evaluate.ruler.tasks import (TASK_NAMES, TASKS, TEMPLATES, CommonWordsBuilder, FrequentWordsBuilder,
                                          NiahBuilder, VariableTrackingBuilder, max_new_tokens_for)

HAYSTACKS = ("corpus", "noise")
QA_FILES = {"qa_1": ("qa_squad_path", "SQuAD 2.0 dev JSON"), "qa_2": ("qa_hotpot_path", "HotpotQA dev distractor JSON")}


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
