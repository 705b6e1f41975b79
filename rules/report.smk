# The report: summary.csv (long form), report.md with the papers' tables, plots.

EVAL_RESULTS = expand(f"{R}/eval/{{variant}}/{{eval}}-{{length}}.json", variant=VARIANTS, eval=EVALS, length=LENGTHS)


rule report:
    input:
        EVAL_RESULTS,
    output:
        md=f"{R}/report.md",
        csv=f"{R}/summary.csv",
        plot=f"{R}/plots/perplexity.png",
    params:
        variants=q([variant_dict(n) for n in VARIANTS]),
        run=q(RUN),
        dataset=PPL_CORPUS,
    log:
        f"{R}/logs/report.log",
    shell:
        "python -m longctx report --results {input} --variants {params.variants} --run {params.run} "
        "--dataset {params.dataset} --out-md {output.md} --out-csv {output.csv} --out-plot {output.plot} > {log} 2>&1"
