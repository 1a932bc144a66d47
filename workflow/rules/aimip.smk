# AI-MIP files: CMOR rewriting per (experiment, member), validation of the whole tree
# (part of `all`), and the upload (target rule `submit_aimip`, never part of `all`).
import os

from mdiff.aimip import drs
from mdiff.aimip.varmap import load_variable_map

AIMIP_ROOT = f"{RESULTS}/aimip"
AIMIP_VARIABLES = list(load_variable_map())
AIMIP_MEMBERS = list(range(1, CFG.rollout.members + 1))
# The AI-MIP files of one member: wildcard patterns for cmorize's output, then the whole tree.
AIMIP_MEMBER_FILES = [f"{AIMIP_ROOT}/{f.relpath}" for f in drs.member_files(
    CFG.aimip, CFG.periods, AIMIP_VARIABLES, "{experiment}", "{member}")]
AIMIP_TREE = [f"{AIMIP_ROOT}/{f.relpath}" for e in CFG.rollout.experiments for k in AIMIP_MEMBERS
              for f in drs.member_files(CFG.aimip, CFG.periods, AIMIP_VARIABLES, e, k)]
VALIDATION_REPORT = f"{RESULTS}/validation/report.json"
VALIDATION_MD = f"{RESULTS}/validation/report.md"
SUBMISSION_MANIFEST = f"{RESULTS}/submission/manifest.json"
# CMOR needs numpy 1.x here, so the CMOR stage runs in its own interpreter: .venv-cmor
# (made by scripts/setup.sh) or, on clusters, the conda env envs/cmor.yaml (mdiff is
# imported from the working tree there: `python -m mdiff.cli`).
# Validation runs the CF checkers of the main env and PrePARE of the CMOR interpreter
# (in the conda env, all three are in envs/cmor.yaml).
if os.path.exists(".venv-cmor/bin/mdiff"):
    CMOR_MDIFF, CMOR_PYTHON, VALIDATE_MDIFF = ".venv-cmor/bin/mdiff", ".venv-cmor/bin/python", "mdiff"
else:
    CMOR_MDIFF = VALIDATE_MDIFF = "python -m mdiff.cli"
    CMOR_PYTHON = "python"


wildcard_constraints:
    experiment="|".join(C.EXPERIMENTS),
    member=r"\d+",


rule cmorize:
    input:
        # the rollout batch holding the member (batches: consecutive blocks of member_batch)
        rollout=lambda w: "{}/rollout/{}/members_{:03d}-{:03d}.nc".format(
            RESULTS, w.experiment, *drs.member_batch(int(w.member), CFG.rollout.members,
                                                     CFG.rollout.member_batch)),
    output:
        files=AIMIP_MEMBER_FILES,
        listing=f"{RESULTS}/cmorize/{{experiment}}/r{{member}}i1p1f1.json",
    params:
        settings=settings("grid", "periods", "aimip"),
        root=lambda w, output: drs.tree_root(output.files[0], CFG.aimip),
        mdiff=CMOR_MDIFF,
    log:
        f"{LOGS}/cmorize/{{experiment}}_r{{member}}.log",
    benchmark:
        f"{BENCH}/cmorize/{{experiment}}_r{{member}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/cmor.yaml"
    shell:
        "{params.mdiff} cmorize --settings {params.settings:q} --input {input.rollout:q}"
        " --experiment {wildcards.experiment} --member {wildcards.member}"
        " --output-root {params.root:q} --file-list {output.listing:q} > {log:q} 2>&1"


rule validate_submission:
    input:
        files=AIMIP_TREE,
        listings=expand(f"{RESULTS}/cmorize/{{experiment}}/r{{member}}i1p1f1.json",
                        experiment=CFG.rollout.experiments, member=AIMIP_MEMBERS),
    output:
        json=VALIDATION_REPORT,
        md=VALIDATION_MD,
    params:
        settings=settings("grid", "periods", "rollout", "aimip"),
        root=lambda w, input: drs.tree_root(input.files[0], CFG.aimip),
        prepare_python=CMOR_PYTHON,
        mdiff=VALIDATE_MDIFF,
    log:
        f"{LOGS}/validate_submission.log",
    benchmark:
        f"{BENCH}/validate_submission.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/cmor.yaml"
    shell:
        "{params.mdiff} validate --settings {params.settings:q} --root {params.root:q}"
        " --prepare-python {params.prepare_python:q} --jobs {threads}"
        " --report-json {output.json:q} --report-md {output.md:q} > {log:q} 2>&1"


# Not part of `all`: `snakemake submit_aimip` after a passed validation. Credentials come
# from the environment or ~/.aws only. For a dry run: `mdiff submit --dry-run` (docs/aimip.md).
rule submit_aimip:
    input:
        report=VALIDATION_REPORT,
        files=AIMIP_TREE,
    output:
        manifest=SUBMISSION_MANIFEST,
    params:
        settings=settings("aimip", "submit"),
        root=lambda w, input: drs.tree_root(input.files[0], CFG.aimip),
    log:
        f"{LOGS}/submit_aimip.log",
    resources:
        runtime=240,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff submit --settings {params.settings:q} --root {params.root:q}"
        " --report {input.report:q} --manifest {output.manifest:q} > {log:q} 2>&1"


ALL_TARGETS += [VALIDATION_REPORT, VALIDATION_MD]
