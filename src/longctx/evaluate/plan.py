"""From the config's ``evaluate`` section to the evaluate jobs: which evaluations, at which lengths,
with which keyword arguments. The workflow's rules call these, so the rules stay thin; this module
imports no torch, so planning the DAG stays fast.
"""

from __future__ import annotations

from longctx.config import eval_lengths, original_context

# config section -> the evaluations it runs, in report order
ORDER = ["perplexity", "passkey", "lines", "wikiqa_ffqa", "wikiqa_altqa", "govreport", "harness"]
GENERATING = {"passkey", "lines", "wikiqa_ffqa", "wikiqa_altqa", "govreport"}


def grid_lengths(max_length: int, points: int = 32) -> list[int]:
    """PI's passkey grid: ``points`` lengths evenly spaced up to ``max_length`` (the last is it)."""
    return sorted({int(round(max_length * (k + 1) / points)) for k in range(points)})


def section_of(name: str) -> str:
    """The config section (``evaluate.<section>``) an evaluation is set in."""
    return "wikiqa" if name.startswith("wikiqa_") else name


def enabled_evaluations(config: dict) -> list[str]:
    ev = config["evaluate"]
    out = []
    for name in ORDER:
        section = ev[section_of(name)]
        if not section["enabled"]:
            continue
        if name.startswith("wikiqa_") and name.removeprefix("wikiqa_") not in section["tasks"]:
            continue
        out.append(name)
    return out


def lengths_for(config: dict, name: str) -> list[int]:
    """The lengths one evaluation runs at (each gives one cached JSON per variant)."""
    ev = config["evaluate"]
    if name == "harness":
        return [original_context(config)]  # short benchmarks: inside the original window
    section = ev[section_of(name)]
    if section.get("lengths"):
        return sorted(set(section["lengths"]))
    if name == "passkey" and section["grid_points"]:
        return grid_lengths(max(eval_lengths(config)), section["grid_points"])
    return eval_lengths(config)


def settings_for(config: dict, name: str) -> dict:
    """Keyword arguments of ``EVALUATIONS[name]`` from the config (paths to data come separately)."""
    ev = config["evaluate"]
    drop = {"enabled", "lengths", "grid_points"}  # what decides the jobs, not how one runs
    if name == "perplexity":
        drop |= {"corpus", "split"}  # the token files come as --data
    if name.startswith("wikiqa_"):
        drop |= {"tasks"}
    section = {k: v for k, v in ev[section_of(name)].items() if k not in drop}
    if name == "passkey":
        section["trials_per_length"] = section.pop("trials")
    if name.startswith("wikiqa_"):
        task = name.removeprefix("wikiqa_")
        paths = {t: section.pop(f"{t}_path") for t in ("ffqa", "altqa")}
        section["hub_path"] = paths[task]
    if name in GENERATING:
        for key, value in ev["generation"].items():
            section.setdefault(key, value)
    return section


def min_length(config: dict, name: str) -> int:
    """A lower bound of the tokens one of the evaluation's prompts and its answer take (0: none known)."""
    import importlib

    module = importlib.import_module(f"longctx.evaluate.{section_of(name)}")
    fewest = getattr(module, "min_length", None)
    return fewest(**settings_for(config, name)) if fewest else 0
