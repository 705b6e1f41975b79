# Evaluations: one cached JSON per (variant, evaluation, length).

PPL = config["evaluate"]["perplexity"]
# each evaluation's keyword arguments (longctx.evaluate.plan); hub datasets load inside the job
EVAL_SETTINGS = {e: lc_eval.settings_for(config, e) for e in EVALS}


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
        launch=launcher(data_parallel=False),
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    log:
        f"{R}/logs/eval/{{variant}}/{{eval}}-{{length}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{variant}}/{{eval}}-{{length}}.tsv"
    shell:
        "{params.launch} evaluate --eval {wildcards.eval} --model {input.model} --out {output} "
        "--variant {params.variant} --length {wildcards.length} --settings {params.settings} "
        "--run {params.run} --seed {params.seed} --device {params.device} {params.data} {params.factors} > {log} 2>&1"
