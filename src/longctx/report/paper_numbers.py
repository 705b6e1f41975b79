"""The papers' own numbers (``paper_numbers.yaml``) and which of them match a reproduction's setting.

The report shows a paper's row beside a variant only when the setting is the same: base model
family, evaluation, metric, dataset, RoPE method, scale, fine-tuned or not, instruction-fine-tuned
(IFT) or not, the scale it was evaluated at (its own unless the row says), searched or not and the
variant's own fine-tuning steps (where the row says), and at least one evaluation length in common.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class PaperRow:
    """One published row: a model variant's numbers by length (or its passkey k_max)."""

    paper: str
    cite: str
    url: str
    table: str
    model: str
    eval: str
    metric: str
    dataset: str | None
    protocol: str
    label: str
    methods: tuple[str, ...]
    scale: float | None
    finetuned: bool
    searched: bool | None = None
    finetune_steps: int | None = None
    instruct: bool = False  # instruction fine-tuned (Giraffe's IFT models; config `instruct`)
    eval_scale: float | None = None  # evaluated at another scale than trained at (None: its own)
    values: dict = field(default_factory=dict)  # length -> number, or the paper's wording (">1000")
    k_max: int | None = None
    model_match: str = ""
    eval_match: str = ""
    metric_match: str = ""
    dataset_match: str | None = None

    @property
    def source(self) -> str:
        return f"{self.paper_title} {self.table}"

    @property
    def setting(self) -> str:
        """Which published row this is, in words: model, scale, fine-tuning (steps, IFT), eval scale."""
        tuned = ("fine-tuned" + (f" {self.finetune_steps} steps" if self.finetune_steps else "")
                 if self.finetuned else "no fine-tuning")
        parts = [self.model, f"s = {self.scale:g}" if self.scale is not None else "scale not stated", tuned]
        if self.instruct:
            parts.append("instruction fine-tuned")
        if self.eval_scale is not None:
            parts.append(f"evaluated at s = {self.eval_scale:g}")
        return "; ".join(parts)

    @property
    def paper_title(self) -> str:
        return {"pi": "PI", "yarn": "YaRN", "longrope": "LongRoPE", "giraffe": "Giraffe"}.get(self.paper, self.paper)


class PaperNumbersError(ValueError):
    """paper_numbers.yaml is malformed; the message names the entry."""


@lru_cache(maxsize=1)
def load() -> tuple[PaperRow, ...]:
    data = yaml.safe_load(resources.files("longctx.report").joinpath("paper_numbers.yaml").read_text())
    return tuple(parse(data))


def parse(data: dict) -> list[PaperRow]:
    papers, out = data["papers"], []
    for i, e in enumerate(data["entries"]):
        where = f"paper_numbers.yaml entries[{i}]"
        if e.get("paper") not in papers:
            raise PaperNumbersError(f"{where}: unknown paper {e.get('paper')!r}; known: {', '.join(papers)}")
        for key in ("table", "model", "model_match", "eval", "eval_match", "metric", "metric_match", "rows"):
            if key not in e:
                raise PaperNumbersError(f"{where}: missing key {key!r}")
        for j, r in enumerate(e["rows"]):
            if ("values" in r) == ("k_max" in r):
                raise PaperNumbersError(f"{where}.rows[{j}]: give either 'values' (by length) or 'k_max'")
            methods = r["method"] if isinstance(r["method"], list) else [r["method"]]
            out.append(PaperRow(
                paper=e["paper"], cite=papers[e["paper"]]["cite"], url=papers[e["paper"]]["url"], table=e["table"],
                model=e["model"], eval=e["eval"], metric=e["metric"], dataset=e.get("dataset"),
                protocol=e.get("protocol", ""), label=r["label"], methods=tuple(methods),
                scale=None if r.get("scale") is None else float(r["scale"]), finetuned=bool(r["finetuned"]),
                searched=r.get("searched"), finetune_steps=r.get("finetune_steps"),
                instruct=bool(r.get("instruct", False)),
                eval_scale=None if r.get("eval_scale") is None else float(r["eval_scale"]),
                values={int(k): v for k, v in r.get("values", {}).items()}, k_max=r.get("k_max"),
                model_match=e["model_match"], eval_match=e["eval_match"], metric_match=e["metric_match"],
                dataset_match=e.get("dataset_match"),
            ))
    return out


@dataclass(frozen=True)
class Setting:
    """What a reproduction's numbers were measured on, as far as matching papers goes."""

    model: str  # model.name_or_path (a hub id, folder or file), or "pretrain"
    datasets: dict = field(default_factory=dict)  # eval name -> strings naming its dataset (corpus, hub path)
    finetune_steps: int | None = None  # the experiment's finetune.steps


def variant_steps(setting: Setting, variant: dict) -> int | None:
    """The steps a fine-tuned variant trained: a chain step's own, its ``finetune`` overrides', else
    the experiment's; None when it is not fine-tuned."""
    if not variant.get("finetune"):
        return None
    own = (variant.get("finetune_settings") or {}).get("steps")
    return variant.get("finetune_steps") or own or setting.finetune_steps


def trained_scale(variant: dict) -> float:
    """The scale a variant's weights were fine-tuned at: an evaluation-scale variant's (config
    ``eval_scales``: the same weights evaluated at ``scale``) ``trained_scale``, else its own."""
    return float(variant.get("trained_scale") or variant["scale"])


def _search(pattern: str | None, texts) -> bool:
    return pattern is not None and any(re.search(pattern, t or "", re.IGNORECASE) for t in texts)


def matches(setting: Setting, variant: dict, eval_name: str, metric: str, lengths=None,
            rows: tuple[PaperRow, ...] | None = None) -> list[PaperRow]:
    """The papers' rows with the same setting as ``variant``'s ``metric`` of ``eval_name`` on ``setting``."""
    found = []
    for r in load() if rows is None else rows:
        if r.scale is None or not math.isclose(r.scale, trained_scale(variant)):
            continue
        # the same weights evaluated at another scale (Giraffe): the row's evaluation scale, else its own
        if not math.isclose(float(variant["scale"]), r.eval_scale or r.scale):
            continue
        # instruction-tuned and evaluation-scale variants run on fine-tuned weights
        instructed = bool(variant.get("instruction_tuned"))
        trained = bool(variant.get("finetune") or instructed or variant.get("trained_scale"))
        if variant["method"] not in r.methods or trained != r.finetuned or instructed != r.instruct:
            continue
        if r.searched is not None and bool(variant.get("search")) != r.searched:
            continue
        if r.finetune_steps is not None and variant_steps(setting, variant) != r.finetune_steps:
            continue
        if not (_search(r.model_match, [setting.model]) and _search(r.eval_match, [eval_name])
                and _search(r.metric_match, [metric])):
            continue
        datasets = setting.datasets.get(eval_name, [])
        if r.dataset_match is not None and not _search(r.dataset_match, datasets):
            continue
        if r.values and lengths is not None and not set(r.values) & set(lengths):
            continue
        found.append(r)
    return found
