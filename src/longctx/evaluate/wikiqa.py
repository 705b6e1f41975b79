"""Giraffe's WikiQA: open-book questions over Wikipedia documents of 2k to 16k tokens.

Two hub datasets in one format: ``abacusai/WikiQA-Free_Form_QA`` (FFQA, 600 per split) and
``abacusai/WikiQA-Altered_Numeric_QA`` (AltQA, 456 per split; numeric answers changed in the
document, so they cannot come from memory), splits ``2k``, ``4k``, ``8k``, ``16k``. Each row holds
``conversations``: the first turn's ``value`` is the prompt (instruction, document, question), the
second turn's ``value`` the reference answer; turns may carry ``tok_len``.

Score: presence accuracy (the stripped reference occurs in the output, 50 new tokens), per split
(evaluation length N reads split ``{N/1024}k``) and by where the answer sits in the document: its
first occurrence in the first 10% (``start``), the last 10% (``end``) or between (``middle``),
Giraffe's three placements; ``absent`` when the reference is not in the document verbatim.
"""

from __future__ import annotations

import time

from longctx.data import vicuna_prompt
from longctx.evaluate.prompts import answer_prompts, encode_prompt, mean_by, presence
from longctx.evaluate.registry import EvaluationError, plain_settings, register

HUB_PATHS = {"ffqa": "abacusai/WikiQA-Free_Form_QA", "altqa": "abacusai/WikiQA-Altered_Numeric_QA"}
POSITIONS = ("start", "middle", "end", "absent")


def split_for(length: int) -> str:
    """The split an evaluation length reads: 2048 -> '2k'."""
    if length % 1024:
        raise EvaluationError(f"wikiqa: length {length} is not a multiple of 1024; the splits are 2k, 4k, 8k, 16k")
    return f"{length // 1024}k"


def parse_row(row: dict) -> tuple[str, str]:
    """(prompt, reference answer) of a row in the hub format."""
    turns = row.get("conversations")
    if not turns or len(turns) < 2 or "value" not in turns[0] or "value" not in turns[1]:
        raise EvaluationError(f"wikiqa: a row lacks conversations[0].value / conversations[1].value (fields: {sorted(row)})")
    return turns[0]["value"], turns[1]["value"]


def document_span(prompt: str) -> tuple[int, int]:
    """Where the document is in a prompt: after ``Document:`` up to a later ``Question:`` (the
    question comes first in half the rows), or the whole prompt when the markers are missing."""
    marker = prompt.find("Document:")
    if marker < 0:
        return 0, len(prompt)
    begin = marker + len("Document:")
    end = prompt.find("Question:", begin)
    return begin, (end if end >= 0 else len(prompt))


def answer_position(prompt: str, reference: str, edge: float = 0.1) -> str:
    """Where the reference first occurs in the document: its first or last ``edge`` (start, end),
    between (middle), or absent."""
    begin, end = document_span(prompt)
    at = prompt.find(reference.strip(), begin, end)
    if at < 0:
        return "absent"
    where = (at - begin) / max(end - begin, 1)
    return "start" if where < edge else ("end" if where >= 1 - edge else "middle")


def prompt_text(prompt: str, prompt_format: str = "plain", template: str = "{prompt}") -> str:
    """A row's prompt as the model reads it: through ``template`` (``plain``), or as the user turn of
    the Vicuna v1.1 template (``vicuna``, Giraffe's instruction-tuned models)."""
    if prompt_format == "vicuna":
        return vicuna_prompt(prompt)
    if prompt_format != "plain":
        raise EvaluationError(f"config key 'evaluate.wikiqa.prompt_format': {prompt_format!r} is not plain or vicuna")
    return template.format(prompt=prompt)


def load_rows(path: str, split: str, revision=None, limit=None) -> list[dict]:
    """One split of a WikiQA dataset (hub id or a local folder in the same format)."""
    import datasets

    try:
        rows = datasets.load_dataset(path, split=split, revision=revision)
    except ValueError as e:  # an unknown split name
        raise EvaluationError(f"wikiqa: dataset {path} has no split {split!r}: {e}") from None
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return [dict(r) for r in rows]


def score(rows: list[dict], outputs: list[str]) -> tuple[list[dict], dict]:
    """Per-row results and the metrics: presence accuracy overall and by answer position."""
    results = []
    for row, output in zip(rows, outputs):
        prompt, reference = parse_row(row)
        results.append({"reference": reference, "output": output, "position": answer_position(prompt, reference),
                        "correct": presence(reference, output)})
    metrics = {"accuracy": sum(r["correct"] for r in results) / len(results)}
    by_position = mean_by(results, "position")
    for p in POSITIONS:
        if p in by_position:
            metrics[f"accuracy_{p}"] = by_position[p]
            metrics[f"count_{p}"] = sum(r["position"] == p for r in results)
    return results, metrics


def _evaluate(task: str, model, tokenizer, length: int, *, hub_path=None, hub_revision=None, max_examples=None,
              max_new_tokens=50, prompt_template="{prompt}", prompt_format="plain", chat_template=False,
              max_prompt_tokens=None, batch_size=8, batch_tokens=65536, **_):
    started = time.time()
    path = hub_path or HUB_PATHS[task]
    split = split_for(length)
    rows = load_rows(path, split, hub_revision, max_examples)
    prompts = [encode_prompt(tokenizer, prompt_text(parse_row(r)[0], prompt_format, prompt_template), chat_template)
               for r in rows]
    skipped = 0
    if max_prompt_tokens:
        # Giraffe's optional filter: only prompts that leave room for the answer inside the window
        keep = [i for i, p in enumerate(prompts) if len(p) <= max_prompt_tokens]
        skipped = len(rows) - len(keep)
        rows, prompts = [rows[i] for i in keep], [prompts[i] for i in keep]
        if not rows:
            raise EvaluationError(f"wikiqa {task}: no prompt of split {split} has at most {max_prompt_tokens} tokens")
    outputs = answer_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                             batch_tokens=batch_tokens)
    results, metrics = score(rows, outputs)
    for r, ids in zip(results, prompts):
        r["prompt_tokens"] = len(ids)
    metrics["prompt_tokens_mean"] = sum(len(p) for p in prompts) / len(prompts)
    return {
        "eval": f"wikiqa_{task}",
        "length": length,
        "source": f"{path}:{split}",
        "dataset": path,
        "skipped_too_long": skipped,
        "examples": results,
        "metrics": metrics,
        "seconds": time.time() - started,
    }


def _task_entry(task: str) -> dict:
    """One evaluation per task of the ``wikiqa`` section: on when the section is and lists the task;
    its dataset is the section's ``<task>_path``."""

    def settings(section: dict) -> dict:
        out = {k: v for k, v in plain_settings(section).items() if k not in ("tasks", "ffqa_path", "altqa_path")}
        return {**out, "hub_path": section[f"{task}_path"]}

    return {"section": "wikiqa", "generates": True, "settings": settings,
            "enabled": lambda section: bool(section["enabled"]) and task in section["tasks"]}


@register("wikiqa_ffqa", order=40, **_task_entry("ffqa"))
def evaluate_ffqa(model, tokenizer, length: int, **settings):
    return _evaluate("ffqa", model, tokenizer, length, **settings)


@register("wikiqa_altqa", order=41, **_task_entry("altqa"))
def evaluate_altqa(model, tokenizer, length: int, **settings):
    return _evaluate("altqa", model, tokenizer, length, **settings)
