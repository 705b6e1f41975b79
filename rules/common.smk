# Config validation and the helpers every rule file uses (paths, variants, params as JSON).
import json
import re
import os
import shlex
import sys
from dataclasses import asdict

from longctx import config as lc
from longctx.tracking import ENV as WANDB_ENV, settings_env

try:
    lc.validate(config)
except lc.ConfigError as e:
    sys.stderr.write(f"Config error: {e}\n")
    sys.exit(1)

EXP = config["experiment"]
R = f"{config['results_dir']}/{EXP}"
L = lc.original_context(config)
LENGTHS = lc.eval_lengths(config)
VARIANTS = {v.name: v for v in lc.variants(config)}
FINETUNED = [n for n, v in VARIANTS.items() if v.finetune]
SEARCHED = [n for n, v in VARIANTS.items() if v.search]
EVALS = [e for e in ("perplexity", "passkey") if config["evaluate"][e]["enabled"]]
PPL_CORPUS = lc.eval_corpus(config)

# W&B settings reach jobs through the environment, not params: toggling W&B reruns nothing
os.environ[WANDB_ENV] = settings_env(config)

RUN = {
    "experiment": EXP,
    "model_source": config["model"]["source"],
    "model": config["model"]["name_or_path"] or "pretrain",
    "original_context": L,
    "seed": config["seed"],
}


def q(obj):
    """A value as a shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def variant_dict(name):
    return asdict(VARIANTS[name])


def model_dir(name):
    """The weights a variant runs on: its fine-tuned folder, or the base model."""
    return f"{R}/models/{name}" if VARIANTS[name].finetune else f"{R}/models/base"


def factors_file(name):
    return f"{R}/search/{name}/factors.json" if VARIANTS[name].search else []


def token_files(corpus, split):
    return multiext(f"{R}/data/{corpus}/{split}", ".bin", ".idx.npy", ".json")


def one_of(names):
    return "|".join(map(re.escape, names)) if names else "(?!)"


wildcard_constraints:
    variant=one_of(VARIANTS),
    corpus=one_of(config["corpora"]),
    split=r"[A-Za-z0-9_]+",
    length=r"\d+",
