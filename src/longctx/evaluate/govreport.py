"""GovReport summarisation (PI, section 3.4): fine-tune on summaries with the prompt loss masked,
generate greedily, score ROUGE-1/2/L with ``rouge-score``.

PI's protocol: documents truncated to 15000 tokens inside the template below, fine-tuning at
16384 for 10 epochs on the training split with the loss on the summary tokens only. This module
gives the fine-tuning data (``finetune_examples`` + ``collate_summaries``: labels are -100 on the
prompt and on padding, which ``longctx.models.loss.causal_lm_nll(..., labels=...)`` ignores) and the
evaluation (``govreport`` in the registry). The dataset: ``ccdv/govreport-summarization``
(config ``document``; fields ``report``, ``summary``), or any dataset in that format.
"""

from __future__ import annotations

import time

from longctx.evaluate.prompts import answer_prompts, encode
from longctx.evaluate.registry import EvaluationError, plain_settings, register

HUB_PATH = "ccdv/govreport-summarization"
HUB_NAME = "document"
TEMPLATE = "Read the following article and then summarize it.\n# {document}\nNow summarize the above article.\nSummary:"
IGNORE = -100


def load_rows(path: str = HUB_PATH, name: str | None = HUB_NAME, split: str = "test", revision=None, limit=None,
              text_field: str = "report", summary_field: str = "summary") -> list[dict]:
    """``[{"document", "summary"}]`` from one split of the hub dataset or a local folder in its format."""
    import datasets

    rows = datasets.load_dataset(path, name, split=split, revision=revision)
    for field in (text_field, summary_field):
        if field not in rows.column_names:
            raise EvaluationError(f"govreport: dataset {path} has no field {field!r} (fields: {rows.column_names})")
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return [{"document": r[text_field], "summary": r[summary_field]} for r in rows]


def prompt_ids(tokenizer, document: str, max_document_tokens: int, max_tokens: int | None = None,
               template: str = TEMPLATE) -> list[int]:
    """The template around the document cut to ``max_document_tokens`` tokens, at most ``max_tokens`` in all."""
    doc = tokenizer(document, add_special_tokens=False)["input_ids"]
    keep = min(len(doc), max_document_tokens)
    while True:
        ids = encode(tokenizer, template.format(document=tokenizer.decode(doc[:keep])))
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
        if keep == 0:
            raise EvaluationError(f"govreport: the template alone has {len(ids)} tokens, over the {max_tokens} allowed")
        keep = max(0, keep - (len(ids) - max_tokens))


def encode_example(tokenizer, document: str, summary: str, max_length: int, max_document_tokens: int = 15000,
                   template: str = TEMPLATE) -> dict:
    """One training example: prompt + summary + EOS; labels copy the summary and EOS, -100 elsewhere.

    The prompt gives way to the summary when both do not fit: the document is cut so that the
    whole summary fits in ``max_length`` when it can; a summary longer than that is cut at its end.
    """
    target = tokenizer(" " + summary.strip(), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    template_only = prompt_ids(tokenizer, "", 0, template=template)
    if max_length - len(target) >= len(template_only):
        prompt = prompt_ids(tokenizer, document, max_document_tokens, max_tokens=max_length - len(target),
                            template=template)
    else:
        prompt = template_only
    ids = (prompt + target)[:max_length]
    labels = ([IGNORE] * len(prompt) + target)[:max_length]
    if all(t == IGNORE for t in labels):
        raise EvaluationError(f"govreport: max_length {max_length} leaves no summary token to train on")
    return {"input_ids": ids, "labels": labels}


def finetune_examples(tokenizer, rows: list[dict], max_length: int, max_document_tokens: int = 15000,
                      template: str = TEMPLATE) -> list[dict]:
    """Training examples (``encode_example``) for rows of ``load_rows``."""
    return [encode_example(tokenizer, r["document"], r["summary"], max_length, max_document_tokens, template)
            for r in rows]


def collate_summaries(examples: list[dict], pad_token_id: int) -> dict:
    """Right-padded batch: ``input_ids``, ``labels`` (-100 on padding) and ``attention_mask`` tensors."""
    width = max(len(e["input_ids"]) for e in examples)
    import torch

    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F1 (x100, Porter stemming as in SCROLLS) with ``rouge-score``."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {k: 100 * v / max(len(predictions), 1) for k, v in totals.items()}


def min_length(max_new_tokens: int = 512, **_) -> int:
    """A prompt of at least a token, and the summary."""
    return max_new_tokens + 1


def settings(section: dict) -> dict:
    """The evaluation's keyword arguments: the section's, less ``finetune`` (a stage before it,
    whose weights the evaluation's fingerprint already covers)."""
    return {k: v for k, v in plain_settings(section).items() if k != "finetune"}


@register("govreport", order=60, generates=True, min_length=min_length, settings=settings)
def evaluate_govreport(model, tokenizer, length: int, *, hub_path=HUB_PATH, hub_name=HUB_NAME, split="test",
                       hub_revision=None, max_examples=None, max_document_tokens=15000, max_new_tokens=512,
                       text_field="report", summary_field="summary", batch_size=4, batch_tokens=65536, **_):
    started = time.time()
    if length <= max_new_tokens:
        raise EvaluationError(f"govreport: length {length} leaves no room for a prompt and {max_new_tokens} new tokens")
    rows = load_rows(hub_path, hub_name, split, hub_revision, max_examples, text_field, summary_field)
    prompts = [prompt_ids(tokenizer, r["document"], max_document_tokens, max_tokens=length - max_new_tokens)
               for r in rows]
    outputs = answer_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                             batch_tokens=batch_tokens)
    metrics = rouge(outputs, [r["summary"] for r in rows])
    metrics["prompt_tokens_mean"] = sum(map(len, prompts)) / len(prompts)
    return {
        "eval": "govreport",
        "length": length,
        "source": f"{hub_path}:{split}",
        "dataset": hub_path,
        "examples": [{"summary": r["summary"], "output": o, "prompt_tokens": len(p)}
                     for r, o, p in zip(rows, outputs, prompts)],
        "metrics": metrics,
        "seconds": time.time() - started,
    }
