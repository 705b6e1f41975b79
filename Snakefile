# Context-window extension of RoPE models (PI, Giraffe, LongRoPE, with NTK-aware and YaRN):
# data -> base model -> fine-tuning / LongRoPE search per variant -> evaluations -> report.
# All logic lives in the `longctx` package (src/longctx); each rule calls one of its entry points.

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
    default_target: True
