# Evaluations: one cached JSON per (variant, evaluation, length).

PPL = config["evaluate"]["perplexity"]
EVAL_SETTINGS = {
    "perplexity": {k: v for k, v in PPL.items() if k not in ("enabled", "corpus", "split")},
    "passkey": {"trials_per_length": config["evaluate"]["passkey"]["trials"],
                "max_new_tokens": config["evaluate"]["passkey"]["max_new_tokens"]},
}


def eval_inputs(w):
    inputs = {"model": model_dir(w.variant), "factors": factors_file(w.variant)}
    if w.eval == "perplexity":
        inputs["data"] = token_files(PPL_CORPUS, PPL["split"])
    return inputs


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        f"{R}/eval/{{variant}}/{{eval}}-{{length}}.json",
    wildcard_constraints:
        eval=one_of(EVALS),
    params:
        variant=lambda w: q(variant_dict(w.variant)),
        settings=lambda w: q(EVAL_SETTINGS[w.eval]),
        data=lambda w: f"--data {R}/data/{PPL_CORPUS}/{PPL['split']}" if w.eval == "perplexity" else "",
        factors=lambda w: f"--factors {factors_file(w.variant)}" if VARIANTS[w.variant].search else "",
        run=q(RUN),
        seed=config["seed"],
        device=config["device"],
    threads: 1
    log:
        f"{R}/logs/eval/{{variant}}/{{eval}}-{{length}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{variant}}/{{eval}}-{{length}}.tsv"
    shell:
        "python -m longctx evaluate --eval {wildcards.eval} --model {input.model} --out {output} "
        "--variant {params.variant} --length {wildcards.length} --settings {params.settings} "
        "--run {params.run} --seed {params.seed} --device {params.device} {params.data} {params.factors} > {log} 2>&1"
