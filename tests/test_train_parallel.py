"""Strategies and sequence parallelism: configs built from settings; on two CPU processes (gloo),
Ulysses training and FSDP2 sharding of the loss module give the results of one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longctx.train import parallel
from longctx.artifacts import write_json
from longctx.train import TrainSettings, Trainer, TrainingError, train

from conftest import tiny_llama

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_deepspeed_json_follows_the_settings():
    z2 = parallel.deepspeed_config(2, micro_batch_size=1, accumulation=8, grad_clip=1.0, bf16=True, cpu_offload=True)
    assert z2["zero_optimization"]["stage"] == 2 and z2["gradient_accumulation_steps"] == 8
    assert z2["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in z2["zero_optimization"] and z2["bf16"]["enabled"] is True
    z3 = parallel.deepspeed_config(3, 2, 4, 0.0, False, True)
    assert z3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3["gradient_clipping"] == 0.0 and z3["train_micro_batch_size_per_gpu"] == 2


def test_fsdp_plugin_wraps_each_decoder_layer():
    kwargs, ds = parallel.accelerator_kwargs("fsdp", tiny_llama(), accumulation=2, micro_batch_size=1, grad_clip=1.0,
                                             mixed_precision="bf16", cpu_offload=True)
    plugin = kwargs["fsdp_plugin"]
    assert ds is None and plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.cpu_offload and kwargs["gradient_accumulation_steps"] == 2


@pytest.mark.skipif(parallel.deepspeed_available(), reason="deepspeed is installed here")
def test_deepspeed_without_the_package_is_a_clear_error():
    with pytest.raises(parallel.ParallelError, match="finetune.strategy.*deepspeed"):
        parallel.accelerator_kwargs("deepspeed_zero3", tiny_llama(), accumulation=1, micro_batch_size=1,
                                    grad_clip=1.0, mixed_precision="no", cpu_offload=False)


def test_sequence_parallel_checks_name_the_key():
    config = tiny_llama(heads=4, kv_heads=2).config
    parallel.check_sequence_parallel(config, 2, 64)
    with pytest.raises(parallel.ParallelError, match="finetune.sequence_parallel.*4 heads and 2 key/value"):
        parallel.check_sequence_parallel(config, 4, 64)
    with pytest.raises(parallel.ParallelError, match="length 65"):
        parallel.check_sequence_parallel(config, 2, 65)
    with pytest.raises(parallel.ParallelError, match="does not divide"):
        parallel.setup_sequence_parallel(2, rank=0, world_size=3)


def torchrun(script: Path, processes: int = 2) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                           "--master-addr", "127.0.0.1", "--master-port", str(port), str(script)],
                          env=env, capture_output=True, text=True, timeout=300)


def documents_token_file(tmp_path, n_docs=60, seed=0):
    """A prepared split of short documents (5-40 tokens), BOS/EOS around each, as longctx.data writes it."""
    rng = np.random.default_rng(seed)
    tokens, bounds = [], []
    for _ in range(n_docs):
        n = int(rng.integers(5, 41))
        bounds.append((len(tokens) + 1, len(tokens) + 1 + n))
        tokens += [1, *rng.integers(3, 96, size=n).tolist(), 2]
    prefix = tmp_path / "docs"
    np.asarray(tokens, dtype=np.uint16).tofile(prefix.with_suffix(".bin"))
    np.save(prefix.with_suffix(".idx.npy"), np.asarray(bounds, dtype=np.int64))
    write_json(prefix.with_suffix(".json"), {"dtype": "uint16", "documents": n_docs, "tokens": len(tokens),
                                              "document_ids": [str(i) for i in range(n_docs)]})
    return prefix


TRAIN = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_llama
from longctx.train import TrainSettings, Trainer, TrainingError, train
s = TrainSettings(**json.loads({settings!r}))
train(tiny_llama(), {data!r}, s, {out!r}, {work!r}, device="cpu")
"""


def test_two_processes_sharing_each_sequence_reach_the_weights_of_one(tmp_path):
    """Ulysses (P=2) on 2 gloo processes through the trainer, packed documents masked from each other."""
    data = documents_token_file(tmp_path)
    common = dict(seq_len=32, steps=3, batch_size=2, micro_batch_size=1, lr=3e-3, warmup_steps=1,
                  checkpoint_every=0, log_every=1, document_masking=True)
    train(tiny_llama(), data, TrainSettings(**common), tmp_path / "one", tmp_path / "w1", device="cpu")

    script = tmp_path / "run.py"
    settings = json.dumps({**common, "sequence_parallel": 2})
    script.write_text(TRAIN.format(tests=str(TESTS), settings=settings, data=str(data), out=str(tmp_path / "two"),
                                   work=str(tmp_path / "w2")))
    done = torchrun(script)
    assert done.returncode == 0, done.stderr[-3000:]

    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=2e-5)
    summary = json.loads((tmp_path / "w2" / "summary.json").read_text())
    assert summary["sequence_parallel"] == 2 and summary["processes"] == 2


# accelerate runs FSDP on GPUs only, so here the loss module is sharded as accelerate's FSDP2 path
# shards it (fully_shard on each decoder layer, then the root): the fused loss reads the LM-head
# weight directly, which must work on the root's unsharded parameters, and Ulysses runs inside
SHARDED = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from torch.distributed.fsdp import fully_shard
from conftest import tiny_llama
from longctx.train import parallel
from longctx.train import LossModule

dist.init_process_group("gloo")
rank = dist.get_rank()
ids = torch.randint(3, 96, (1, 32), generator=torch.Generator().manual_seed(0))
segments = torch.zeros_like(ids)
segments[:, 10:] = 1
sp = parallel.setup_sequence_parallel(2, rank, 2)
model = tiny_llama()
parallel.enable_ulysses(model, "sdpa", sp)
module = LossModule(model, chunk_size=8, backend="sdpa", document_masking=True, sp=sp)
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(module)
loss, logged = module(ids, segments)
loss.backward()
grads = {{k: p.grad.full_tensor() for k, p in module.named_parameters()}}  # gathered from the shards

reference = tiny_llama()
ref_module = LossModule(reference, chunk_size=8, backend="sdpa", document_masking=True)
ref_loss, ref_logged = ref_module(ids, segments)
ref_loss.backward()
assert abs(float(logged) - float(ref_logged)) < 1e-5, (float(logged), float(ref_logged))
for k, p in ref_module.named_parameters():
    assert torch.allclose(grads[k], p.grad, rtol=1e-4, atol=1e-7), k
print(f"sharded {{type(module).__name__}}", flush=True)  # one write: two processes share stdout
dist.destroy_process_group()
"""


def test_the_loss_module_under_fsdp2_sharding_matches_one_process(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED.format(tests=str(TESTS)))
    done = torchrun(script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sharded FSDPLossModule") == 2


def test_fsdp_on_cpu_processes_is_refused_rather_than_run_as_ddp(tmp_path):
    with pytest.raises(TrainingError, match="finetune.strategy.*fsdp needs CUDA"):
        Trainer(tiny_llama(), TrainSettings(seq_len=32, steps=1, batch_size=1, strategy="fsdp"), device="cpu")


RESUMABLE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
import longctx.train.loop as train_mod
from conftest import tiny_llama
from longctx.train import TrainSettings, train
real_save = train_mod._save_checkpoint

def save_then_die(trainer, ckpt, step, *args):
    real_save(trainer, ckpt, step, *args)
    if step == {kill_at}:
        sys.exit(3)  # every process dies right after the checkpoint, as a killed job does

train_mod._save_checkpoint = save_then_die
train(tiny_llama(), {data!r}, TrainSettings(**json.loads({settings!r})), {out!r}, {work!r}, device="cpu")
"""


def test_two_data_parallel_processes_resume_from_a_checkpoint_to_the_same_weights(tmp_path):
    """DDP on 2 gloo processes: the checkpoint gathers on the main process and is broadcast back."""
    data = documents_token_file(tmp_path)
    settings = json.dumps(dict(seq_len=32, steps=6, batch_size=4, micro_batch_size=1, lr=3e-3, warmup_steps=1,
                               checkpoint_every=2, log_every=1))

    def run(out, work, kill_at=None):
        script = tmp_path / f"{out}.py"
        script.write_text(RESUMABLE.format(tests=str(TESTS), settings=settings, data=str(data), kill_at=kill_at,
                                           out=str(tmp_path / out), work=str(tmp_path / work)))
        return torchrun(script)

    assert run("straight", "w1").returncode == 0
    assert run("resumed", "w2", kill_at=4).returncode != 0
    assert json.loads((tmp_path / "w2" / "checkpoint" / "progress.json").read_text())["step"] == 4
    done = run("resumed", "w2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and not list((tmp_path / "w2").glob("*set-aside*"))
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
