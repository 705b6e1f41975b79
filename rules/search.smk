# LongRoPE evolutionary factor search at a variant's target length; resumes from its candidate log.
# A progressive chain's step searches on the base model or (secondary search) on the weights of its
# last fine-tuned step, multiplying the factors those were fine-tuned with; its final model gets
# short-context recovery searches on its final weights.

SEARCH_CORPUS = lc.search_corpus(config)
SEARCH_SETTINGS = {k: v for k, v in config["search"].items() if k not in ("corpus", "split")}


rule search:
    input:
        model=lambda w: search_dir(w.variant),
        data=token_files(SEARCH_CORPUS, config["search"]["split"]),
        base_factors=lambda w: base_factors_file(w.variant),
    output:
        f"{R}/search/{{variant}}/factors.json",
    wildcard_constraints:
        variant=one_of([n for n in SEARCHED if SEARCH_OWNER[n] == n and n not in RECOVERED]),
    params:
        variant=lambda w: q(variant_dict(w.variant)),
        settings=q(SEARCH_SETTINGS),
        prefix=lambda w, input: input.data[0].removesuffix(".bin"),
        base_factors=lambda w: option("--base-factors", base_factors_file(w.variant)),
        log_file=f"{R}/search/{{variant}}/candidates.jsonl",
        run=q(RUN),
        device=config["device"],
        launch=launcher(data_parallel=False),
    threads: stage_threads("search")
    resources:
        **stage_resources("search"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/search/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/search/{{variant}}.tsv"
    shell:
        "{params.launch} search --model {input.model:q} --data {params.prefix:q} --out {output:q} "
        "--variant {params.variant} --settings {params.settings} --run {params.run} --device {params.device:q} "
        "--log-file {params.log_file:q} {params.base_factors:q} > {log:q} 2>&1"


rule recovery:
    input:
        model=lambda w: search_dir(w.variant),
        data=token_files(SEARCH_CORPUS, config["search"]["split"]),
        long_factors=lambda w: factors_file(VARIANTS[w.variant].recovery_of),
    output:
        f"{R}/search/{{variant}}/factors.json",
    wildcard_constraints:
        variant=one_of(RECOVERED),
    params:
        variant=lambda w: q(variant_dict(w.variant)),
        settings=q(SEARCH_SETTINGS),
        prefix=lambda w, input: input.data[0].removesuffix(".bin"),
        log_dir=f"{R}/search/{{variant}}",
        run=q(RUN),
        device=config["device"],
        launch=launcher(data_parallel=False),
    threads: stage_threads("search")
    resources:
        **stage_resources("search"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/search/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/search/{{variant}}.tsv"
    shell:
        "{params.launch} recovery --model {input.model:q} --data {params.prefix:q} --out {output:q} "
        "--variant {params.variant} --settings {params.settings} --run {params.run} --device {params.device:q} "
        "--long-factors {input.long_factors:q} --log-dir {params.log_dir:q} > {log:q} 2>&1"
