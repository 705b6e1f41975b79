"""W&B conventions: a small workflow run offline through the stage functions, read back from the
run files: every run has group, job_type and the shared config keys, the evaluation tables hold
the numbers summary.csv holds, and no secret reaches a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from longctx import config as lc
from longctx import jobs, tracking
from longctx.config import evaluations as plan
from longctx.report import read_csv

from conftest import AUSTEN

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # a W&B API key's shape; must appear nowhere
FAKE_HF_TOKEN = "hf_" + "Z" * 34
LENGTHS = [256, 512]


def tiny_config(root: Path) -> dict:
    """A workflow a CPU runs in seconds: 20 pretraining steps at 64 tokens, one fine-tuned and one
    searched variant at 4x, perplexity and passkey (1 trial) at 2 lengths, W&B offline."""
    corpus = root / "corpus"
    corpus.mkdir()
    for name, chars in [("emma.txt", 60000), ("persuasion.txt", 12000), ("northanger_abbey.txt", 12000)]:
        text = (AUSTEN / name).read_text()[20000:20000 + chars]
        pieces = [text[i:i + 3000] for i in range(0, len(text), 3000)]
        for k, piece in enumerate(pieces):
            (corpus / f"{Path(name).stem}-{k}.txt").write_text(piece)
    files = lambda stem: sorted(p.name for p in corpus.glob(f"{stem}-*.txt"))  # noqa: E731
    return lc.validate({
        "experiment": "tiny",
        "results_dir": str(root / "results"),
        "corpora": {"austen": {"source": "local", "root": str(corpus), "splits": {
            "train": files("emma"), "validation": files("northanger_abbey"), "test": files("persuasion")}}},
        "model": {"source": "pretrain", "pretrain": {
            "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
            "num_kv_heads": 2, "context": 64, "steps": 20, "batch_size": 4, "warmup_steps": 2}},
        "variants": [{"method": "pi", "scale": 4, "finetune": True},
                     {"method": "longrope", "scale": 4, "search": True}],
        "finetune": {"steps": 2, "batch_size": 2, "micro_batch_size": 2, "lr": 1e-3, "warmup_steps": 0,
                     "checkpoint_every": 0, "log_every": 1},
        "search": {"documents": 1, "population": 4, "iterations": 2, "mutations": 1, "crossovers": 1, "parents": 2},
        "evaluate": {"lengths": LENGTHS, "passkey": {"trials": 1}},
        "wandb": {"mode": "offline", "project": "longctx-test", "tags": ["ci"]},
    })


@pytest.fixture(scope="module")
def offline_workflow(tmp_path_factory):
    """Every stage of the workflow called as the rules call it, with W&B offline; returns (config, results dir)."""
    root = tmp_path_factory.mktemp("workflow")
    config = tiny_config(root)
    R = Path(config["results_dir"]) / config["experiment"]
    L = lc.original_context(config)
    variants = lc.variants(config)
    by_name = {v.name: v for v in variants}
    run = lc.RunInfo("tiny", "pretrain", "pretrain", L, config["seed"])
    assert run == lc.RunInfo.of(config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tracking.ENV, tracking.settings_env(config))  # what rules/common.smk exports
        mp.setenv("WANDB_API_KEY", FAKE_KEY)  # as a user with an account would have: offline must not write it
        mp.setenv("HF_TOKEN", FAKE_HF_TOKEN)
        corpus = config["corpora"]["austen"]
        jobs.tokenizer(config={k: config[k] for k in ("model", "corpora", "seed")}, out=R / "tokenizer")
        for split in ("train", "validation", "test"):
            jobs.prepare(corpus=corpus, split=split, tokenizer=R / "tokenizer", out_prefix=R / "data" / "austen" / split,
                         run=run)
        data = R / "data" / "austen"
        jobs.base_model(config={k: config[k] for k in ("model", "seed")}, tokenizer=R / "tokenizer",
                        out=R / "models" / "base", train_data=data / "train", run=run, work_dir=R / "work" / "base")
        ft_settings = {k: v for k, v in config["finetune"].items() if k != "corpus"}
        jobs.finetune(model=R / "models" / "base", data=data / "train", out=R / "models" / "pi-x4-ft",
                      variant=by_name["pi-x4-ft"], settings=ft_settings, run=run, device="cpu",
                      work_dir=R / "work" / "pi-x4-ft")
        search_settings = {k: v for k, v in config["search"].items() if k not in ("corpus", "split")}
        factors = R / "search" / "longrope-x4-search" / "factors.json"
        factors.parent.mkdir(parents=True)  # Snakemake makes an output's folder before the job
        jobs.search(model=R / "models" / "base", data=data / "validation", out=factors,
                    variant=by_name["longrope-x4-search"], settings=search_settings, run=run, device="cpu",
                    log_file=factors.parent / "candidates.jsonl")
        results = []
        for v in variants:
            model = R / "models" / ("pi-x4-ft" if v.finetune else "base")
            for eval_name in ("perplexity", "passkey"):
                for n in LENGTHS:
                    results.append(R / "eval" / v.name / f"{eval_name}-{n}.json")
                    jobs.evaluate(evaluation=eval_name, model=model, outs=[results[-1]], variant=v, lengths=[n],
                                  settings=plan.settings_for(config, eval_name), run=run, device="cpu",
                                  data=data / "test" if eval_name == "perplexity" else None,
                                  factors=factors if v.search else None)
        jobs.report(results=results, variants=variants, run=run, dataset="austen", out_md=R / "report.md",
                    out_csv=R / "summary.csv", out_html=R / "report.html", plots=R / "plots", search=[factors],
                    dataset_id=[corpus["root"]], finetune_steps=config["finetune"]["steps"])
    return config, R


def test_every_job_is_one_run_with_group_job_type_and_the_shared_config_keys(offline_workflow):
    config, R = offline_workflow
    runs = tracking.offline_runs(R / "wandb")
    assert Counter(r.job_type for r in runs) == {"prepare": 3, "pretrain": 1, "finetune": 1, "search": 1,
                                                 "eval-perplexity": 6, "eval-passkey": 6, "report": 1}
    for r in runs:
        assert r.group == "tiny" and r.project == "longctx-test"
        assert set(tracking.SHARED_KEYS) <= set(r.config), (r.name, set(tracking.SHARED_KEYS) - set(r.config))
        assert r.config["stage"] == r.job_type
        # the resolved experiment config, whole and identical in every run
        assert r.config["experiment_config"]["finetune"]["steps"] == 2
        assert {"tiny", r.job_type, "ci"} <= set(r.tags)
    names = {r.name for r in runs}
    assert {"pretrain|base|pretrain", "pretrain|pi-x4-ft|finetune", "pretrain|longrope-x4-search|search",
            "pretrain|pi-x4-ft|eval-perplexity@256", "pretrain|report", "pretrain|prepare@austen/train"} <= names
    assert len(names) == len(runs)  # one name per job
    finetune = next(r for r in runs if r.job_type == "finetune")
    assert finetune.config["method"] == "pi" and finetune.config["scale"] == 4.0
    assert finetune.config["target_length"] == 256 and finetune.config["settings"]["steps"] == 2
    assert "method:pi" in finetune.tags and "finetuned" in finetune.tags


def test_training_curves_and_search_progress_are_logged_per_step(offline_workflow):
    _, R = offline_workflow
    runs = tracking.offline_runs(R / "wandb")
    pretrain = next(r for r in runs if r.job_type == "pretrain")
    steps = [row["_step"] for row in pretrain.history if "train/loss" in row]
    assert steps == sorted(steps) and len(steps) >= 10 and steps[-1] == 20
    search = next(r for r in runs if r.job_type == "search")
    assert [row["_step"] for row in search.history if "search/best_perplexity" in row] == [1, 2]
    assert search.summary["best_perplexity"] > 1


def test_evaluation_tables_hold_the_numbers_of_summary_csv(offline_workflow):
    _, R = offline_workflow
    summary = {(r["variant"], r["eval"], r["length"], r["metric"]): r["value"] for r in read_csv(R / "summary.csv")}
    logged = {}
    for r in tracking.offline_runs(R / "wandb"):
        if not r.job_type.startswith("eval-"):
            continue
        eval_name = r.job_type.removeprefix("eval-")
        for row in r.table(f"eval/{eval_name}"):
            logged[(row["variant"], eval_name, row["length"], row["metric"])] = row["value"]
            assert r.summary[row["metric"]] == row["value"]  # and the run's summary metric
        if eval_name == "passkey":
            trials = r.table("eval/passkey/trials")
            assert len(trials) == 1 and {"key", "depth", "correct", "answer"} <= set(trials[0])
    assert logged == summary and len(summary) == 3 * 2 * (3 + 1)
    # the report run logs the same rows, the paper-style tables and the figures
    report = next(r for r in tracking.offline_runs(R / "wandb") if r.job_type == "report")
    rows = report.table("report/summary")
    assert {(x["variant"], x["eval"], x["length"], x["metric"]): x["value"] for x in rows} == summary
    ppl = {x["variant"]: x for x in report.table("report/perplexity/perplexity")}
    assert ppl["pi-x4-ft"]["512"] == summary[("pi-x4-ft", "perplexity", 512, "perplexity")]
    assert report.summary["passkey/k_max/base"] in (0, 256, 512)
    assert report.media("report/plots/perplexity").read_bytes()[:4] == b"\x89PNG"
    assert report.media("report/plots/passkey_heatmap/base").exists()
    assert report.media("report/plots/search").exists()


def test_no_secret_reaches_any_file(offline_workflow):
    config, R = offline_workflow
    for path in Path(config["results_dir"]).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert FAKE_KEY.encode() not in data and FAKE_HF_TOKEN.encode() not in data, path


def test_run_config_has_the_same_keys_for_every_stage():
    run = {"experiment": "e", "model_source": "hub", "model": "meta-llama/Llama-2-7b-hf", "original_context": 4096,
           "seed": 1}
    variant = {"name": "yarn-x16-ft", "method": "yarn", "scale": 16.0, "params": {}, "finetune": True, "search": False}
    configs = [tracking.run_config(run, "prepare", dataset="pg19", split="train"),
               tracking.run_config(run, "finetune", variant, 65536, "pg19", steps=400, lr=2e-5),
               tracking.run_config(run, "eval-passkey", variant, 8192, "passkey", trials_per_length=10)]
    assert all(tuple(c) == tracking.SHARED_KEYS for c in configs)
    assert configs[1]["target_length"] == 65536 and configs[0]["method"] is None
    assert tracking.run_name(configs[1]) == "Llama-2-7b-hf|yarn-x16-ft|finetune"
    assert tracking.run_name(configs[2]) == "Llama-2-7b-hf|yarn-x16-ft|eval-passkey@8192"
    assert tracking.run_name(configs[0]) == "Llama-2-7b-hf|prepare@pg19/train"


def test_secret_looking_values_are_withheld_from_run_configs():
    scrubbed = tracking.scrub({"hub_token": "abc", "api_key": "k", "max_new_tokens": 10, "tokenizer": "path/tok",
                               "nested": {"password": "p", "revision": "a" * 40}, "note": FAKE_HF_TOKEN})
    assert scrubbed == {"hub_token": "<redacted>", "api_key": "<redacted>", "max_new_tokens": 10,
                        "tokenizer": "path/tok", "nested": {"password": "<redacted>", "revision": "a" * 40},
                        "note": "<redacted>"}


def test_disabled_mode_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENV, json.dumps({"mode": "disabled", "project": "p", "experiment": "e",
                                                 "dir": str(tmp_path)}))
    with tracking.job({"experiment": "e", "model_source": "pretrain", "model": "pretrain", "original_context": 8,
                       "seed": 1}, "report") as tracker:
        assert not tracker.enabled
        tracker.log({"x": 1})
        tracker.table("t", ["a"], [[1]])
    assert not list(tmp_path.iterdir())  # no run folder where offline runs would go


def _default_experiment_run_names() -> list[str]:
    """The run name of every job of the embedded default that logs to W&B, as jobs.py starts them."""
    config = lc.load_config(Path(__file__).resolve().parents[1] / "config.yaml")
    run = lc.RunInfo.of(config).to_dict()
    L = lc.original_context(config)
    variants = lc.variants(config)
    owners = lc.search_owners(variants)
    configs = [tracking.run_config(run, "prepare", dataset="austen", split=s) for s in ("train", "validation", "test")]
    configs += [tracking.run_config(run, "pretrain", lc.BASE), tracking.run_config(run, "report")]
    for v in variants:  # the base model among them
        target = v.target_length(L)
        if v.finetune:
            configs.append(tracking.run_config(run, "finetune", v, target))
        if v.recovery_of:  # one search run per recovery length
            configs += [tracking.run_config(run, "search", v, n) for n in v.recovery_lengths]
        elif v.search and owners[v.name] == v.name:
            configs.append(tracking.run_config(run, "search", v, target))
        for e in plan.enabled_evaluations(config):
            configs += [tracking.run_config(run, f"eval-{e}", v, n) for n in plan.lengths_for(config, e)]
    return [tracking.run_name(c) for c in configs]


def test_every_job_of_the_default_experiment_has_its_own_run_name():
    """Issue 20: longrope-prog-x8 and longrope-prog-x8-recovery shared their names (10 pairs)."""
    names = _default_experiment_run_names()
    assert len(names) > 60
    assert [n for n, k in Counter(names).items() if k > 1] == []
    assert "pretrain|longrope-prog-x8-recovery|eval-perplexity@1024" in names
    assert "pretrain|longrope-prog-x8|eval-perplexity@1024" in names
    assert "pretrain|longrope-prog-x8-recovery|search@128" in names and "pretrain|longrope-prog-x8|search" in names


def _run_job(env: dict, variant: str, final_loss: float) -> None:
    """One fine-tune job's W&B run, in its own process as the workflow's jobs are (wandb writes an
    offline run's file completely by the time its process ends)."""
    code = ("import sys; from longctx import tracking\n"
            "run = {'experiment': 'again', 'model_source': 'pretrain', 'model': 'pretrain', 'original_context': 64,"
            " 'seed': 1}\n"
            "variant = {'name': sys.argv[1], 'method': 'pi', 'scale': 2.0, 'params': {}, 'finetune': True,"
            " 'search': False}\n"
            "with tracking.job(run, 'finetune', variant, 128) as t:\n"
            "    t.summary({'final_loss': float(sys.argv[2])})\n")
    subprocess.run([sys.executable, "-c", code, variant, str(final_loss)], env=env, check=True, timeout=120)


def test_a_job_that_runs_again_supersedes_its_earlier_runs(tmp_path, capsys):
    """A killed or rerun job leaves several runs of one job: the latest keeps the tag `latest`, the
    earlier ones move to wandb/superseded/ (sync them with --replace-tags latest=superseded), and
    `python -m longctx wandb-runs --latest` lists one run per job."""
    from longctx.cli import main

    env = {**os.environ, tracking.ENV: json.dumps({"mode": "offline", "project": "p", "experiment": "again",
                                                   "dir": str(tmp_path)}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(tracking.__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH")]))}
    _run_job(env, "pi-x2-ft", 3.0)  # killed, say
    _run_job(env, "pi-x2-ft", 2.0)  # its retry
    _run_job(env, "pi-x4-ft", 1.0)  # another job
    latest = tracking.offline_runs(tmp_path / "wandb")
    assert [(r.name, r.summary["final_loss"]) for r in latest] == [("pretrain|pi-x2-ft|finetune", 2.0),
                                                                    ("pretrain|pi-x4-ft|finetune", 1.0)]
    assert all("latest" in r.tags and not r.superseded for r in latest)
    every = tracking.offline_runs(tmp_path / "wandb", superseded=True)
    (old,) = [r for r in every if r.superseded]
    assert old.summary["final_loss"] == 3.0 and old.path.parent == tmp_path / "wandb" / "superseded"
    assert tracking.latest_runs(every) == latest
    capsys.readouterr()
    assert main(["wandb-runs", "--latest", str(tmp_path / "wandb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("  latest  " in line for line in lines)
    assert main(["wandb-runs", str(tmp_path / "wandb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[1] for line in lines) == ["latest", "latest", "superseded"]


def test_online_runs_of_a_job_that_runs_again_are_retagged_through_the_api(monkeypatch):
    """Online, the earlier runs (found by group and name) lose `latest` and get `superseded`; an API
    that cannot be reached leaves a warning, and the new run is logged anyway."""
    import wandb

    updated = []

    class Run:
        def __init__(self, tags):
            self.tags = tags

        def update(self):
            updated.append(list(self.tags))

    class Api:
        default_entity = "me"

        def __init__(self, timeout):
            pass

        def runs(self, path, filters):
            assert path == "team/p" and filters == {"group": "e", "display_name": "m|v|finetune",
                                                    "tags": {"$in": ["latest"]}}
            return [Run(["e", "latest", "finetune"])]

    monkeypatch.setattr(wandb, "Api", Api)
    s = {"mode": "online", "project": "p", "entity": "team", "experiment": "e", "dir": "/nowhere"}
    assert len(tracking.supersede(s, "m|v|finetune")) == 1 and updated == [["e", "finetune", "superseded"]]

    def unreachable(timeout):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "Api", unreachable)
    assert tracking.supersede(s, "m|v|finetune") == []
