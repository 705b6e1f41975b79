# LongRoPE evolutionary factor search at a variant's target length; resumes from its candidate log.

SEARCH_CORPUS = lc.search_corpus(config)


rule search:
    input:
        model=f"{R}/models/base",
        data=token_files(SEARCH_CORPUS, config["search"]["split"]),
    output:
        f"{R}/search/{{variant}}/factors.json",
    wildcard_constraints:
        variant=one_of(SEARCHED),
    params:
        variant=lambda w: q(variant_dict(w.variant)),
        settings=q({k: v for k, v in config["search"].items() if k not in ("corpus", "split")}),
        prefix=f"{R}/data/{SEARCH_CORPUS}/{config['search']['split']}",
        log_file=f"{R}/search/{{variant}}/candidates.jsonl",
        run=q(RUN),
        seed=config["seed"],
        device=config["device"],
    threads: workflow.cores
    log:
        f"{R}/logs/search/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/search/{{variant}}.tsv"
    shell:
        "python -m longctx search --model {input.model} --data {params.prefix} --out {output} "
        "--variant {params.variant} --settings {params.settings} --original-context " + str(L) + " "
        "--run {params.run} --seed {params.seed} --device {params.device} --log-file {params.log_file} > {log} 2>&1"
