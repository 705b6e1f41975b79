"""Config validation: defaults filled in, mistakes named by key, fast."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longctx.config import ConfigError, eval_lengths, load_config, validate, variants

REPO = Path(__file__).resolve().parents[1]


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_embedded_default_is_valid_and_gets_defaults():
    cfg = load_config(REPO / "config.yaml")
    assert cfg["finetune"]["betas"] == [0.9, 0.95]  # a default from the schema
    assert cfg["search"]["n_hat_choices"][-1] == 256
    assert eval_lengths(cfg) == [128, 256, 512, 1024]
    names = [v.name for v in variants(cfg)]
    assert names[0] == "base" and "pi-x4-ft" in names and "longrope-prog-x8-recovery" in names


# five different mistakes, each must name its key
MISTAKES = [
    ({"finetune": {"stepz": 10}}, "finetune.stepz"),  # unknown key
    ({"finetune": {"steps": "ten"}}, "finetune.steps"),  # wrong type
    ({"variants": [{"method": "linearr", "scale": 4}]}, "variants[0].method"),  # unknown method
    ({"variants": [{"method": "pi", "scale": 1}]}, "variants[0].scale"),  # target not above original context
    ({"evaluate": {"perplexity": {"corpus": "pg19"}}}, "evaluate.perplexity.corpus"),  # undefined corpus
    ({"variants": [{"method": "yarn", "scale": 4, "params": {"betta": 3}}]}, "variants[0].params"),
    ({"model": {"source": "hub"}}, "model.name_or_path"),
]


@pytest.mark.parametrize("override,key", MISTAKES)
def test_mistake_names_the_key(override, key):
    cfg = default_config()
    for k, v in override.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        validate(cfg)


def test_snakemake_rejects_malformed_config_fast_naming_the_key(tmp_path):
    """Five malformed configs, each rejected by the workflow before any job, in < 10 s, key named."""
    for override, key in MISTAKES[:5]:
        cfg = default_config()
        for k, v in override.items():
            cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cfg))
        started = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "-d", str(tmp_path),
             "-s", str(REPO / "Snakefile")],
            capture_output=True, text=True, cwd=REPO,
        )
        elapsed = time.time() - started
        assert proc.returncode != 0
        assert key in proc.stderr + proc.stdout, proc.stderr[-2000:]
        assert elapsed < 10, f"{key}: took {elapsed:.1f}s"


def dry_run(tmp_path, config: dict, *args) -> subprocess.CompletedProcess:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", str(path), "-d", str(tmp_path),
                           "-s", str(REPO / "Snakefile"), *args], capture_output=True, text=True, cwd=REPO)


def own_experiment() -> dict:
    """A config of its own: no `search`, no `progressive`, one searched LongRoPE variant."""
    return {"experiment": "mine", "corpora": {"austen": {**default_config()["corpora"]["austen"],
                                                           "root": str(REPO / "data" / "austen")}},
            "model": {"source": "pretrain", "pretrain": {"context": 128}},
            "variants": [{"method": "longrope", "scale": 4, "search": True}]}


def test_a_config_file_runs_that_config_plus_the_schema_defaults_not_the_embedded_default(tmp_path):
    proc = dry_run(tmp_path, own_experiment())
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    search = re.search(r"longctx search .*--settings '([^']*)'", text)
    settings = json.loads(search.group(1))
    # the schema's search (the paper's P=64, T=40), not config.yaml's scaled-down one (P=8, T=3)
    assert (settings["population"], settings["iterations"], settings["documents"]) == (64, 40, 5)
    assert "longrope-prog" not in text and "results/mine/" in text and "austen-tiny" not in text


def test_config_overrides_apply_on_top_of_the_config_file(tmp_path):
    proc = dry_run(tmp_path, own_experiment(), "--config", "experiment=other", "seed=7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "results/other/" in text and "results/mine/" not in text and '"seed": 7' in text


def test_without_a_config_file_the_embedded_default_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "seed=7"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "results/austen-tiny/" in proc.stdout + proc.stderr


def mistake(**changes) -> dict:
    cfg = default_config()
    cfg["corpora"]["austen"]["root"] = str(REPO / "data" / "austen")
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    return cfg


CONFIG_TIME_MISTAKES = [
    # a corpus name that would be a command in a shell
    (mistake(corpora={"a$(touch /tmp/longctx-x)": {"source": "local", "root": str(REPO / "data" / "austen"),
                                                    "splits": {"train": ["emma.txt"]}}}),
     re.escape("config key 'corpora': the name 'a$(touch /tmp/longctx-x)' is not allowed")),
    (mistake(corpora={"austen": {**default_config()["corpora"]["austen"], "root": str(REPO / "data" / "nowhere")}}),
     "corpora.austen.root': folder .*nowhere does not exist"),
    (mistake(corpora={"austen": {"source": "local", "root": str(REPO / "data" / "austen"),
                                 "splits": {"train": ["emma.txt", "ulysses.txt"], "validation": ["emma.txt"],
                                            "test": ["emma.txt"]}}}),
     "corpora.austen.splits.train': file .*ulysses.txt does not exist"),
    (mistake(evaluate={"length_multiples": [1, 2], "perplexity": {"split": "dev"}}),
     "evaluate.perplexity.split': corpus 'austen' has no split 'dev'"),
    (mistake(search__split="heldout"), "search.split': corpus 'austen' has no split 'heldout'"),
    (mistake(finetune__batch_size=6, finetune__micro_batch_size=4), "finetune.micro_batch_size': batch_size \\(6\\)"),
    (mistake(evaluate={"length_multiples": [0.25, 1]}), "evaluate.passkey': length 32 is below what passkey needs"),
]


@pytest.mark.parametrize("config,message", CONFIG_TIME_MISTAKES)
def test_mistakes_are_named_at_config_time(config, message):
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_a_mistake_fails_the_workflow_before_any_job_and_creates_nothing(tmp_path):
    marker = tmp_path / "x"
    cfg = mistake(corpora={f"a$(touch {marker})": {"source": "local", "root": str(REPO / "data" / "austen"),
                                                   "splits": {"train": ["emma.txt"]}}})
    proc = dry_run(tmp_path, cfg)
    assert proc.returncode != 0 and "is not allowed" in proc.stderr
    assert not marker.exists() and not (tmp_path / "results").exists()


def test_device_cuda_without_a_gpu_fails_before_any_job_when_jobs_run_here(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**own_experiment(), "device": "cuda"}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(path), "-d",
                           str(tmp_path), "-s", str(REPO / "Snakefile")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "config key 'device': 'cuda', but this machine has no CUDA GPU" in proc.stderr
    assert not (tmp_path / "results").exists()
    # a dry run plans (e.g. a paper config on a laptop) without complaint
    assert dry_run(tmp_path, {**own_experiment(), "device": "cuda"}).returncode == 0


def test_an_evaluation_scale_evaluates_the_fine_tuned_weights_with_the_other_scales_rope(tmp_path):
    """Giraffe evaluates a model trained at scale 4 at scale 8: ``pi-x4-ft@x8`` runs on the weights
    of ``pi-x4-ft`` (fine-tuned once), with PI at 8."""
    import torch

    from conftest import tiny_llama
    from longctx.jobs import extended_model
    from longctx.rope import apply_to_model

    cfg = default_config()
    cfg["variants"] = [{"method": "pi", "scale": 4, "finetune": True, "eval_scales": [8]}]
    cfg["evaluate"]["ruler"] = {**cfg["evaluate"].get("ruler", {}), "variants": None}
    validate(cfg)
    by_name = {v.name: v for v in variants(cfg)}
    trained, at8 = by_name["pi-x4-ft"], by_name["pi-x4-ft@x8"]
    assert (at8.start, at8.scale, at8.trained_scale, at8.finetune) == ("pi-x4-ft", 8.0, 4.0, False)
    assert trained.finetune and trained.scale == 4.0
    folder = tmp_path / "pi-x4-ft"  # stands for the fine-tuned weights, saved with the RoPE they trained with
    apply_to_model(tiny_llama(seed=3), "pi", 4.0).save_pretrained(folder)
    as_trained = extended_model(folder, trained, as_saved=True)
    at_eight = extended_model(folder, at8, as_saved=at8.finetune)
    assert as_trained.config.rope_parameters["factor"] == 4.0
    assert at_eight.config.rope_parameters["factor"] == 8.0 and at_eight.config.longctx_rope["scale"] == 8.0
    assert all(torch.equal(a, b) for a, b in zip(as_trained.parameters(), at_eight.parameters()))
    # a bad evaluation scale, or one without fine-tuned weights, names its key
    for variant, message in [({"finetune": True, "eval_scales": [0.5]}, "a number >= 1 other than"),
                             ({"eval_scales": [8]}, "needs finetune")]:
        cfg["variants"] = [{"method": "pi", "scale": 4, **variant}]
        with pytest.raises(ConfigError, match=r"'variants\[0\]\.eval_scales': .*" + message):
            validate(cfg)
