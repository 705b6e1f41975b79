# Tokenizer and token files: text corpora (local files or a streamed hub dataset) -> memory-mapped tokens.


rule tokenizer:
    input:
        source_model_files(),
    output:
        directory(f"{R}/tokenizer"),
    params:
        cfg=q({k: config[k] for k in ("model", "corpora", "seed")}),
    threads: stage_threads("tokenizer")
    resources:
        **stage_resources("tokenizer"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/tokenizer.log",
    benchmark:
        f"{R}/benchmarks/tokenizer.tsv"
    shell:
        "python -m longctx tokenizer --config {params.cfg} --out {output:q} > {log:q} 2>&1"


rule prepare_corpus:
    input:
        tokenizer=f"{R}/tokenizer",
    output:
        token_files("{corpus}", "{split}"),
    params:
        corpus=lambda w: q(config["corpora"][w.corpus]),
        prefix=f"{R}/data/{{corpus}}/{{split}}",
        run=q(RUN),
    threads: stage_threads("prepare")
    resources:
        **stage_resources("prepare"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/prepare/{{corpus}}-{{split}}.log",
    benchmark:
        f"{R}/benchmarks/prepare/{{corpus}}-{{split}}.tsv"
    shell:
        "python -m longctx prepare --corpus {params.corpus} --split {wildcards.split:q} "
        "--tokenizer {input.tokenizer:q} --out-prefix {params.prefix:q} --run {params.run} > {log:q} 2>&1"
