# AI-MIP files: CMOR rewriting per (experiment, member) on the native grid (gn) and, if
# aimip.grids has gr, the 1-degree copy; validation of the whole tree (part of `all`).
import os

AIMIP_MEMBERS = list(range(1, CFG.rollout.members + 1))
AIMIP_GRIDS = CFG.aimip.grids  # gn, and gr (1 degree, regridded from gn) if configured


# The whole tree: every grid, experiment and member.
AIMIP_TREE = [
    f
    for g in AIMIP_GRIDS
    for e in CFG.rollout.experiments
    for k in AIMIP_MEMBERS
    for f in aimip_files(g, e, k)
]
VALIDATION_REPORT = f"{RESULTS}/validation/report.json"
VALIDATION_MD = f"{RESULTS}/validation/report.md"
# CMOR needs numpy 1.x here, so the CMOR stage runs in its own interpreter: .venv-cmor
# (made by scripts/setup.sh) or, on clusters, the conda env envs/cmor.yaml (mdiff is
# imported from the working tree there: `python -m mdiff.cli`).
# Validation runs the CF checkers of the main env and PrePARE of the CMOR interpreter
# (in the conda env, all three are in envs/cmor.yaml).
if os.path.exists(".venv-cmor/bin/mdiff"):
    CMOR_MDIFF, CMOR_PYTHON, VALIDATE_MDIFF = (
        ".venv-cmor/bin/mdiff",
        ".venv-cmor/bin/python",
        "mdiff",
    )
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
            RESULTS,
            w.experiment,
            *drs.member_batch(int(w.member), CFG.rollout.members, CFG.rollout.member_batch),
        ),
    output:
        files=aimip_files("gn"),
        listing=cmorize_listing("gn"),
    params:
        # aimip.grids is not used here: adding gr reruns no gn job
        settings=settings("grid", "periods", "aimip", drop=["aimip.grids"]),
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


rule cmorize_gr:
    """The member's 1-degree (gr) files: its gn files regridded conservatively with CDO,
    rewritten with CMOR (only when aimip.grids has gr)."""
    input:
        aimip_files("gn"),
    output:
        files=aimip_files("gr"),
        listing=cmorize_listing("gr"),
    params:
        # aimip.grids is not used here: adding gr reruns no gn job
        settings=settings("grid", "periods", "aimip", drop=["aimip.grids"]),
        root=lambda w, output: drs.tree_root(output.files[0], CFG.aimip),
        mdiff=CMOR_MDIFF,
    log:
        f"{LOGS}/cmorize_gr/{{experiment}}_r{{member}}.log",
    benchmark:
        f"{BENCH}/cmorize_gr/{{experiment}}_r{{member}}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/cmor.yaml"
    shell:
        "{params.mdiff} cmorize-gr --settings {params.settings:q} --experiment {wildcards.experiment}"
        " --member {wildcards.member} --root {params.root:q} --file-list {output.listing:q} > {log:q} 2>&1"


rule validate_submission:
    input:
        files=AIMIP_TREE,
        listings=[
            cmorize_listing(g, e, k)
            for g in AIMIP_GRIDS
            for e in CFG.rollout.experiments
            for k in AIMIP_MEMBERS
        ],
    output:
        json=VALIDATION_REPORT,
        md=report(VALIDATION_MD, caption="../report/validation.rst", category="AI-MIP files"),
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


ALL_TARGETS += [VALIDATION_REPORT, VALIDATION_MD]
