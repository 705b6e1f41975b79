# Evaluations: one cached JSON per (variant, evaluation, length); inputs and settings in common.smk.


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
        data=lambda w: option("--data", eval_data_prefix(w.eval)),
        factors=lambda w: option("--factors", factors_file(w.variant)),
        run=q(RUN),
        device=config["device"],
        launch=launcher(data_parallel=False),
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/eval/{{variant}}/{{eval}}-{{length}}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{variant}}/{{eval}}-{{length}}.tsv"
    shell:
        "{params.launch} evaluate --evaluation {wildcards.eval:q} --model {input.model:q} --out {output:q} "
        "--variant {params.variant} --length {wildcards.length:q} --settings {params.settings} "
        "--run {params.run} --device {params.device:q} {params.data:q} {params.factors:q} > {log:q} 2>&1"
