# Context-window extension of RoPE models (PI, Giraffe, LongRoPE, with NTK-aware and YaRN):
# data -> base model -> fine-tuning / LongRoPE search per variant -> evaluations -> report.
# All logic lives in the `longctx` package (src/longctx); each rule calls one of its entry points.

# The embedded default experiment, only when no --configfile is given: a config file runs exactly
# that config plus the schema's defaults (README: "Configs"); --config k=v overrides either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/finetune.smk"
include: "rules/search.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        f"{R}/report.md",
        f"{R}/summary.csv",
        # the evaluation JSONs too: a deleted one is rebuilt (and the report with it)
        eval_result_files(),
    default_target: True
