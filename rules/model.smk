# The base model: pretrained here (the embedded default) or imported from the hub, a folder or a GGUF file.

PRETRAIN = config["model"]["source"] == "pretrain"


rule base_model:
    input:
        tokenizer=f"{R}/tokenizer",
        train=token_files(lc.train_corpus(config, "pretrain"), "train") if PRETRAIN else [],
        source=source_model_files(),
    output:
        directory(f"{R}/models/base"),
    params:
        cfg=q({k: config[k] for k in ("model", "seed")}),
        train_data=lambda w, input: option("--train-data", input.train[0].removesuffix(".bin") if input.train else None),
        work_dir=f"{R}/work/base",
        run=q(RUN),
        launch=launcher(data_parallel=PRETRAIN),
    threads: stage_threads("base_model")
    resources:
        **stage_resources("base_model"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/base_model.log",
    benchmark:
        f"{R}/benchmarks/base_model.tsv"
    shell:
        "{params.launch} base-model --config {params.cfg} --tokenizer {input.tokenizer:q} "
        "{params.train_data:q} --out {output:q} --work-dir {params.work_dir:q} "
        "--run {params.run} > {log:q} 2>&1"
