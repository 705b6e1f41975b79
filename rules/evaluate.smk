# Evaluations: one cached JSON per (variant, evaluation, length); inputs and settings in common.smk.
# evaluate.one_job_per groups them into jobs: one per result (rule evaluate), one per (variant,
# evaluation) writing all its lengths (rules evaluate_<evaluation>), or one per variant running all
# its evaluations (rules evaluate_variant_<variant>). Grouped outputs are flagged update(), so a job
# keeps each result already made from the same inputs (longctx.jobs.evaluate_variant).

EVAL_SHELL = (
    "{params.launch} evaluate --evaluation {params.evaluation:q} --model {input.model:q} "
    "--variant {params.variant} --lengths {params.lengths:q} --outs {output:q} --settings {params.settings} "
    "--run {params.run} --device {params.device:q} {params.data:q} {params.factors:q} {params.task_model:q} "
    "> {log:q} 2>&1"
)


if config["evaluate"]["one_job_per"] == "length":

    rule evaluate:
        input:
            unpack(eval_inputs),
        output:
            eval_json("{variant}", "{eval}", "{length}"),
        wildcard_constraints:
            eval=one_of(EVALS),
        params:
            evaluation=lambda w: w.eval,
            lengths=lambda w: [w.length],
            variant=lambda w: q(variant_dict(w.variant)),
            settings=lambda w: q(EVAL_SETTINGS[w.eval]),
            data=lambda w: option("--data", eval_data_prefix(w.eval)),
            factors=lambda w: option("--factors", factors_file(w.variant)),
            task_model=lambda w: option("--task-model", task_model_dir(w.variant, w.eval)),
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
            EVAL_SHELL

elif config["evaluate"]["one_job_per"] == "evaluation":
    for EVAL in EVALS:

        rule:
            name:
                f"evaluate_{EVAL}"
            input:
                unpack(lambda w, name=EVAL: eval_inputs(w, name)),
            output:
                [update(eval_json("{variant}", EVAL, n)) for n in EVAL_LENGTHS[EVAL]],
            wildcard_constraints:
                variant=one_of(EVAL_VARIANTS[EVAL]),
            params:
                evaluation=EVAL,
                lengths=EVAL_LENGTHS[EVAL],
                variant=lambda w: q(variant_dict(w.variant)),
                settings=q(EVAL_SETTINGS[EVAL]),
                data=option("--data", eval_data_prefix(EVAL)),
                factors=lambda w: option("--factors", factors_file(w.variant)),
                task_model=lambda w, name=EVAL: option("--task-model", task_model_dir(w.variant, name)),
                run=q(RUN),
                device=config["device"],
                launch=launcher(data_parallel=False),
            threads: stage_threads("evaluate")
            resources:
                **stage_resources("evaluate"),
            conda:
                "../envs/longctx.yaml"
            log:
                f"{R}/logs/eval/{{variant}}/{EVAL}.log",
            benchmark:
                f"{R}/benchmarks/eval/{{variant}}/{EVAL}.tsv"
            shell:
                EVAL_SHELL

else:
    for VARIANT, PLAN in variant_eval_plans().items():
        READS_DATA = any(p["reads_data"] for p in PLAN)

        rule:
            name:
                f"evaluate_variant_{re.sub(r'[^A-Za-z0-9_]', '_', VARIANT)}"
            input:
                model=model_dir(VARIANT),
                factors=factors_file(VARIANT),
                data=token_files(PPL_CORPUS, PPL["split"]) if READS_DATA else [],
                task_models=[p["model"] for p in PLAN if p.get("model")],
            output:
                [update(out) for p in PLAN for out in p["outs"]],
            params:
                plan=q(PLAN),
                variant=q(variant_dict(VARIANT)),
                data=option("--data", PPL_DATA if READS_DATA else None),
                factors=option("--factors", factors_file(VARIANT)),
                run=q(RUN),
                device=config["device"],
                launch=launcher(data_parallel=False),
            threads: stage_threads("evaluate")
            resources:
                **stage_resources("evaluate"),
            conda:
                "../envs/longctx.yaml"
            log:
                f"{R}/logs/eval/{VARIANT}.log",
            benchmark:
                f"{R}/benchmarks/eval/{VARIANT}.tsv"
            shell:
                "{params.launch} evaluate-variant --model {input.model:q} --variant {params.variant} "
                "--plan {params.plan} --run {params.run} --device {params.device:q} {params.data:q} "
                "{params.factors:q} > {log:q} 2>&1"
