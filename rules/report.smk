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
        dataset_ids=" ".join(f"--dataset-id {shlex.quote(x)}" for x in DATASET_IDS),
        finetune_steps=config["finetune"]["steps"],
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/report.log",
    shell:
        "python -m longctx report --results {input.results} --search {input.search} --variants {params.variants} "
        "--run {params.run} --dataset {params.dataset} {params.dataset_ids} --finetune-steps {params.finetune_steps} "
        "--out-md {output.md} --out-csv {output.csv} --out-html {output.html} --plots {output.plots} > {log} 2>&1"


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
        "python -m longctx compare --summaries {input} --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"
