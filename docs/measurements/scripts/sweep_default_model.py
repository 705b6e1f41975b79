"""GPU sweep: which tiny-model pretraining config shows RoPE extrapolation failure clearly?"""
# run from the repository root with PYTHONPATH=src, after the default experiment's data is prepared
import math, time, json, itertools
import numpy as np, torch
import longctx.train as T
import yaml
from longctx.models.llama import new_pretrain_model
from longctx.data import TokenFile
from longctx.rope import apply_to_model

D = "results/austen-tiny/data/austen"
test = TokenFile.open(f"{D}/test")
dev = torch.device("cuda")

def ppl(model, N, bos):
    docs = test.documents_at_least(N)
    rows = []
    for i in docs:
        t = np.asarray(test.document(i)[: N - 1 if bos else N], dtype=np.int64)
        if bos: t = np.concatenate([[1], t])
        rows.append(t)
    x = torch.tensor(np.stack(rows), device=dev)
    with torch.no_grad():
        lp = torch.log_softmax(model(x).logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, x[:, 1:, None])[..., 0]
    return math.exp(nll.mean(1).mean().item())

orig_batch = T.PackedSequences.batch
def run(theta, heads, bos, steps, hidden=128, layers=4):
    T.PackedSequences.batch = (lambda self, p, s: torch.cat([torch.ones(s, 1, dtype=torch.long), orig_batch(self, p, s)[:, 1:]], 1)) if bos else orig_batch
    cfg = yaml.safe_load(open("config.yaml"))
    p = cfg["model"]["pretrain"]; p.update(rope_theta=theta, intermediate_size=352, num_heads=heads, num_kv_heads=heads, hidden_size=hidden, num_layers=layers)
    m = new_pretrain_model(p, 4096, 1, 2, cfg["seed"]).to(dev)
    s = T.TrainSettings(seq_len=128, steps=steps, batch_size=32, micro_batch_size=32, lr=3e-3, warmup_steps=30, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1, checkpoint_every=0, log_every=100)
    T.train(m, f"{D}/train", s, f"/tmp/sw/m", f"/tmp/sw/w")
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained("/tmp/sw/m").to(dev).eval()
    res = {"theta": theta, "heads": heads, "bos": bos, "steps": steps, "hidden": hidden, "layers": layers}
    for N in (128, 256, 512, 1024): res[f"base@{N}"] = round(ppl(m, N, bos), 1)
    apply_to_model(m, "pi", 4, {}); res["pi@512"] = round(ppl(m, 512, bos), 1)
    apply_to_model(m, "yarn", 4, {}); res["yarn@512"] = round(ppl(m, 512, bos), 1)
    # fine-tune PI at 512 like the default (40 steps, batch 8)
    apply_to_model(m, "pi", 4, {}); m.train()
    s2 = T.TrainSettings(seq_len=512, steps=40, batch_size=8, micro_batch_size=8, lr=5e-4, warmup_steps=5, schedule="constant", checkpoint_every=0, log_every=20)
    T.train(m, f"{D}/train", s2, f"/tmp/sw/ft", f"/tmp/sw/wft")
    ft = AutoModelForCausalLM.from_pretrained("/tmp/sw/ft").to(dev).eval()
    res["pi_ft@128"] = round(ppl(ft, 128, bos), 1); res["pi_ft@512"] = round(ppl(ft, 512, bos), 1)
    res["ratio_4x_1x"] = round(res["base@512"] / res["base@128"], 3)
    res["ratio_base4x_pift4x"] = round(res["base@512"] / res["pi_ft@512"], 3)
    print(json.dumps(res), flush=True)
    return res

import shutil
grid = [(1e4, 4, False, 500), (1e5, 4, False, 500), (1e6, 4, False, 500), (1e4, 4, True, 500), (1e5, 4, True, 500),
        (1e4, 8, False, 500), (1e5, 8, False, 500), (1e5, 4, False, 1000), (1e5, 4, True, 1000), (1e6, 4, True, 500)]
out = []
for g in grid:
    shutil.rmtree("/tmp/sw", ignore_errors=True)
    t = time.time(); out.append(run(*g)); print("took", round(time.time() - t, 1), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
