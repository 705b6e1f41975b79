# The report: summary.csv (long form), report.md and report.html with the papers' tables and plots,
# and a W&B `report` run; `compare` puts several experiments' summary.csv side by side.

PPL_SOURCE = config["corpora"][PPL_CORPUS]
# other names of the perplexity corpus, so the report can tell PG19 or Proof-pile from a local corpus
DATASET_IDS = [x for x in (PPL_SOURCE.get("hub_path"), PPL_SOURCE.get("root")) if x]


rule report:
    input:
        results=eval_result_files(),
        search=list(dict.fromkeys(factors_file(n) for n in SEARCHED)),
    output:
        md=f"{R}/report.md",
        csv=f"{R}/summary.csv",
        html=f"{R}/report.html",
        plots=directory(f"{R}/plots"),
    params:
        variants=q([variant_dict(n) for n in VARIANTS]),
        run=q(RUN),
        dataset=PPL_CORPUS,
        dataset_ids=[word for x in DATASET_IDS for word in ("--dataset-id", x)],
        finetune_steps=config["finetune"]["steps"],
        threshold=config["report"]["effective_length_threshold"],
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/report.log",
    shell:
        "python -m longctx report --results {input.results:q} --search {input.search:q} --variants {params.variants} "
        "--run {params.run} --dataset {params.dataset:q} {params.dataset_ids:q} "
        "--finetune-steps {params.finetune_steps:q} --effective-length-threshold {params.threshold:q} "
        "--out-md {output.md:q} --out-csv {output.csv:q} "
        "--out-html {output.html:q} --plots {output.plots:q} > {log:q} 2>&1"


rule compare:
    input:
        [f"{config['results_dir']}/{e}/summary.csv" for e in dict.fromkeys([EXP, *config["report"]["compare"]])],
    output:
        md=f"{config['results_dir']}/compare.md",
        csv=f"{config['results_dir']}/compare.csv",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/compare.log",
    shell:
        "python -m longctx compare --summaries {input:q} --out-md {output.md:q} --out-csv {output.csv:q} > {log:q} 2>&1"
