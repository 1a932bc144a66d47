# The submission root (docs/aimip.md): the model's folder of the validated AI-MIP tree gets
# a dataset card, the licence, the weights and a sha256 manifest (part of `all`); the
# upload of the whole root with object-by-object verification (`submit_aimip`, never
# part of `all`).
SUBMISSION_ROOT = f"{AIMIP_ROOT}/{drs.submission_root(CFG.aimip)}"
# README.md (the dataset card) first, then LICENSE and weights/
SUBMISSION_CARD, *SUBMISSION_FILES = [f"{SUBMISSION_ROOT}/{n}" for n in drs.PACKAGE_FILES]
SUBMISSION_CHECKSUMS = f"{SUBMISSION_ROOT}/{drs.CHECKSUMS}"
SUBMISSION_MANIFEST = f"{RESULTS}/submission/manifest.json"


rule package_submission:
    """Dataset card (README.md), LICENSE, weights/ and MANIFEST.sha256 of every file."""
    input:
        report=VALIDATION_REPORT,
        files=AIMIP_TREE,
        checkpoint=CHECKPOINT,
        card=MODEL_CARD,
        curve=f"{MODEL_DIR}/loss_curve.png",
        scores=f"{REPORT}/scores.json",
        rollout=ROLLOUT_FILES,
    output:
        card=report(
            SUBMISSION_CARD,
            caption="../report/dataset_card.rst",
            category="AI-MIP files",
        ),
        files=SUBMISSION_FILES,
        checksums=SUBMISSION_CHECKSUMS,
    params:
        settings=settings("grid", "periods", "rollout", "aimip", "source", "model"),
        root=lambda w, input: drs.tree_root(input.files[0], CFG.aimip),
    log:
        f"{LOGS}/package_submission.log",
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff package --settings {params.settings:q} --root {params.root:q} --report {input.report:q}"
        " --checkpoint {input.checkpoint:q} --model-card {input.card:q} --loss-curve {input.curve:q}"
        " --scores {input.scores:q} --rollout {input.rollout:q} > {log:q} 2>&1"


# Not part of `all`: `snakemake submit_aimip` after a passed validation. Credentials come
# from the environment or ~/.aws only. For a dry run: `mdiff submit --dry-run` (docs/aimip.md).
rule submit_aimip:
    """Upload the submission root; verify every remote object against MANIFEST.sha256."""
    input:
        report=VALIDATION_REPORT,
        files=AIMIP_TREE,
        package=[SUBMISSION_CARD, *SUBMISSION_FILES],
        checksums=SUBMISSION_CHECKSUMS,
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
        " --report {input.report:q} --checksums {input.checksums:q}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"


ALL_TARGETS += [SUBMISSION_CHECKSUMS]
