"""From the config's ``evaluate`` section to the evaluate jobs: which evaluations, at which lengths,
with which keyword arguments. Generic over the registry (``longctx.evaluate.registry``): each
entry's hooks read its own section, so the rules and the report need no list of evaluations."""

from __future__ import annotations

from longctx import evaluate
from longctx.config.experiment import eval_lengths, original_context


def enabled_evaluations(config: dict) -> list[str]:
    """The evaluations the config turns on, in report order."""
    ev = config["evaluate"]
    return [name for name, e in evaluate.entries().items() if e.enabled(ev[e.section])]


def lengths_for(config: dict, name: str) -> list[int]:
    """The lengths one evaluation runs at (each gives one cached JSON per variant)."""
    e = evaluate.entries()[name]
    return e.lengths(config["evaluate"][e.section], eval_lengths(config), original_context(config))


def variants_for(config: dict, name: str, all_variants: list[str]) -> list[str]:
    """The variants an evaluation runs on: its section's ``variants`` where it has one, else all."""
    e = evaluate.entries()[name]
    chosen = config["evaluate"][e.section].get("variants")
    return list(all_variants) if chosen is None else [v for v in all_variants if v in chosen]


def settings_for(config: dict, name: str) -> dict:
    """Keyword arguments of the evaluation's function from the config (paths to data come separately)."""
    e = evaluate.entries()[name]
    settings = e.settings(config["evaluate"][e.section])
    if e.generates:  # evaluate.generation's batching, where the section does not set its own
        for key, value in config["evaluate"]["generation"].items():
            if settings.get(key) is None:
                settings[key] = value
    return settings


def min_length(config: dict, name: str) -> int:
    """A lower bound of the tokens one of the evaluation's prompts and its answer take (0: none known)."""
    e = evaluate.entries()[name]
    return e.min_length(**settings_for(config, name)) if e.min_length else 0


def section_of(name: str) -> str:
    """The config section (``evaluate.<section>``) an evaluation is set in."""
    return evaluate.entries()[name].section
