# mdiff: ERA5 (or the embedded synthetic world) -> Monthly Diffusion emulator -> AI-MIP.
# The only entry point: config, schema validation, includes, and the default target.
# Rules hold no logic: each calls one `mdiff` command (see mdiff/cli.py).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk" if CFG.source == "synthetic" else "workflow/rules/era5.smk"
include: "workflow/rules/statistics.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/rollout.smk"
include: "workflow/rules/aimip.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/submission.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
