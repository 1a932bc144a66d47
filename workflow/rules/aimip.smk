# AI-MIP files: CMOR rewriting per (experiment, member) on the native grid (gn) and, if
# aimip.grids has gr, the 1-degree copy; validation of the whole tree (part of `all`).
# CMOR needs numpy 1.x, so the CMOR stage runs in its own interpreter: the commands move
# into .venv-cmor (scripts/setup.sh) by themselves, and on clusters the rules run in the
# conda env envs/cmor.yaml, which imports mdiff from the working tree: hence
# `python -m mdiff.cli` (mdiff.aimip.cmor_env). Validation runs PrePARE in the CMOR
# interpreter and the CF checkers beside the one it runs in.
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


wildcard_constraints:
    experiment="|".join(P.EXPERIMENTS),
    member=r"\d+",


rule cmorize:
    input:
        # the rollout batch holding the member (batches: consecutive blocks of member_batch)
        rollout=lambda w: rollout_file(
            w.experiment,
            *P.member_batch(int(w.member), CFG.rollout.members, CFG.rollout.member_batch),
        ),
    output:
        files=aimip_files("gn"),
        listing=cmorize_listing("gn"),
    params:
        # aimip.grids is not used here: adding gr reruns no gn job
        settings=settings("grid", "periods", "aimip", drop=["aimip.grids"]),
        root=lambda w, output: drs.tree_root(output.files[0], CFG.aimip),
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
        "python -m mdiff.cli cmorize --settings {params.settings:q} --input {input.rollout:q}"
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
        "python -m mdiff.cli cmorize-gr --settings {params.settings:q} --experiment {wildcards.experiment}"
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
        "python -m mdiff.cli validate --settings {params.settings:q} --root {params.root:q}"
        " --jobs {threads}"
        " --report-json {output.json:q} --report-md {output.md:q} > {log:q} 2>&1"


ALL_TARGETS += [VALIDATION_REPORT, VALIDATION_MD]
