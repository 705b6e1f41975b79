"""The papers' own numbers (``paper_numbers.yaml``) and which of them match a reproduction's setting.

The report shows a paper's row beside a variant only when the setting is the same: base model
family, evaluation, metric, dataset, RoPE method, scale, fine-tuned or not (and searched, and the
fine-tuning steps, where the row says), and at least one evaluation length in common.
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
    instruct: bool | None = None  # instruction-tuned (Giraffe's IFT, config `instruct`); None: either
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
                searched=r.get("searched"), finetune_steps=r.get("finetune_steps"), instruct=r.get("instruct"),
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
    finetune_steps: int | None = None


def _search(pattern: str | None, texts) -> bool:
    return pattern is not None and any(re.search(pattern, t or "", re.IGNORECASE) for t in texts)


def matches(setting: Setting, variant: dict, eval_name: str, metric: str, lengths=None,
            rows: tuple[PaperRow, ...] | None = None) -> list[PaperRow]:
    """The papers' rows with the same setting as ``variant``'s ``metric`` of ``eval_name`` on ``setting``."""
    found = []
    for r in load() if rows is None else rows:
        if r.scale is None or not math.isclose(r.scale, float(variant["scale"])):
            continue
        # an instruction-tuned variant's weights were trained (from its source's); its row says IFT
        trained = bool(variant.get("finetune") or variant.get("instruct_of"))
        if variant["method"] not in r.methods or trained != r.finetuned:
            continue
        if r.instruct is not None and bool(variant.get("instruct_of")) != r.instruct:
            continue
        if r.searched is not None and bool(variant.get("search")) != r.searched:
            continue
        if r.finetune_steps is not None and setting.finetune_steps != r.finetune_steps:
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
