# Fine-tuning per (method, scale) at the target length; resumable from its checkpoint in work/.
# LongRoPE2's mixed context window training may take its short windows from another corpus.

rule finetune:
    input:
        model=lambda w: start_dir(w.variant),
        data=token_files(FT_CORPUS, "train"),
        factors=lambda w: factors_file(w.variant),
        short_data=lambda w: short_token_files(w.variant),
    output:
        directory(f"{R}/models/{{variant}}"),
    wildcard_constraints:
        variant=one_of(FINETUNED),
    params:
        variant=lambda w: q(variant_dict(w.variant)),
        settings=q({k: v for k, v in config["finetune"].items() if k != "corpus"}),
        prefix=lambda w, input: input.data[0].removesuffix(".bin"),
        factors=lambda w: option("--factors", factors_file(w.variant)),
        short_data=lambda w, input: option("--short-data", input.short_data[0].removesuffix(".bin") if input.short_data else None),
        work_dir=f"{R}/work/{{variant}}",
        run=q(RUN),
        device=config["device"],
        launch=launcher(data_parallel=True),
    threads: stage_threads("finetune")
    resources:
        **stage_resources("finetune"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/finetune/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{variant}}.tsv"
    shell:
        "{params.launch} finetune --model {input.model:q} --data {params.prefix:q} --out {output:q} "
        "--variant {params.variant} --settings {params.settings} --run {params.run} --device {params.device:q} "
        "{params.factors:q} {params.short_data:q} --work-dir {params.work_dir:q} > {log:q} 2>&1"
