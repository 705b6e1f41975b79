"""Config validation: defaults filled in, mistakes named by key, fast."""

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
