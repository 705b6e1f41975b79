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


# Supervised fine-tunes on (prompt, response) examples (longctx.train.supervised), from a variant's
# weights. PI's GovReport fine-tune: read by that variant's GovReport evaluation only.

rule finetune_govreport:
    input:
        model=lambda w: model_dir(w.variant),
        factors=lambda w: factors_file(w.variant),
    output:
        directory(f"{R}/task_models/govreport/{{variant}}"),
    wildcard_constraints:
        variant=one_of(TASK_TUNED["govreport"]),
    params:
        variant=lambda w: q(variant_dict(w.variant)),
        settings=lambda w: q(lc.task_settings(config, VARIANTS[w.variant], GOVREPORT["finetune"])),
        dataset=q({"path": GOVREPORT["hub_path"], "name": GOVREPORT["hub_name"], "split": GOVREPORT["finetune"]["split"],
                   "revision": GOVREPORT["hub_revision"], "max_examples": GOVREPORT["finetune"]["max_examples"],
                   "text_field": GOVREPORT["text_field"], "summary_field": GOVREPORT["summary_field"],
                   "max_document_tokens": GOVREPORT["max_document_tokens"]}),
        factors=lambda w: option("--factors", factors_file(w.variant)),
        work_dir=f"{R}/work/govreport/{{variant}}",
        run=q(RUN),
        device=config["device"],
        launch=launcher(data_parallel=True),
    threads: stage_threads("finetune")
    resources:
        **stage_resources("finetune"),
    conda:
        "../envs/longctx.yaml"
    log:
        f"{R}/logs/finetune_govreport/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_govreport/{{variant}}.tsv"
    shell:
        "{params.launch} task-finetune --task govreport --model {input.model:q} --out {output:q} "
        "--variant {params.variant} --settings {params.settings} --dataset {params.dataset} --run {params.run} "
        "--device {params.device:q} {params.factors:q} --work-dir {params.work_dir:q} > {log:q} 2>&1"


# Giraffe's instruction fine-tune: <variant>-ift, a variant of its own, from <variant>'s weights.

rule instruct:
    input:
        model=lambda w: model_dir(VARIANTS[w.variant].instruct_of),
        factors=lambda w: factors_file(VARIANTS[w.variant].instruct_of),
    output:
        directory(f"{R}/models/{{variant}}"),
    wildcard_constraints:
        variant=one_of(INSTRUCTED),
    params:
        variant=lambda w: q(variant_dict(VARIANTS[w.variant].instruct_of)),
        settings=lambda w: q(lc.task_settings(config, VARIANTS[VARIANTS[w.variant].instruct_of], config["instruct"])),
        dataset=q(config["instruct"]["dataset"]),
        factors=lambda w: option("--factors", factors_file(VARIANTS[w.variant].instruct_of)),
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
        f"{R}/logs/instruct/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/instruct/{{variant}}.tsv"
    shell:
        "{params.launch} task-finetune --task instruct --model {input.model:q} --out {output:q} "
        "--variant {params.variant} --settings {params.settings} --dataset {params.dataset} --run {params.run} "
        "--device {params.device:q} {params.factors:q} --work-dir {params.work_dir:q} > {log:q} 2>&1"
