# Ensemble rollouts (mdiff rollout): per experiment and member batch, periods.run_start ..
# periods.run_end from the encoded initial state. Batches are consecutive blocks of
# rollout.member_batch out of rollout.members (1-based, inclusive). A killed job resumes
# from {output}.resume.pt when rerun (not a declared output: Snakemake leaves it alone).
ROLLOUT_BATCHES = [
    (a, min(a + CFG.rollout.member_batch - 1, CFG.rollout.members))
    for a in range(1, CFG.rollout.members + 1, CFG.rollout.member_batch)
]
ROLLOUT_FILES = [
    f"{RESULTS}/rollout/{experiment}/members_{a:03d}-{b:03d}.nc"
    for experiment in CFG.rollout.experiments
    for a, b in ROLLOUT_BATCHES
]


rule rollout:
    """One experiment x member batch: stream every month of every member to NetCDF."""
    input:
        checkpoint=f"{RESULTS}/model/checkpoint.pt",
        forcing=PREPARED_FORCING,
        initial_state=state_files([CFG.periods.run_start, CFG.periods.run_start]),
        normalization=NORMALIZATION,
        statics=PREPARED_STATICS,
    output:
        f"{RESULTS}/rollout/{{experiment}}/members_{{first}}-{{last}}.nc",
    wildcard_constraints:
        experiment="|".join(C.EXPERIMENTS),
        first=r"\d{3}",
        last=r"\d{3}",
    params:
        settings=settings("grid", "periods", "rollout"),
    log:
        f"{LOGS}/rollout/{{experiment}}_members_{{first}}-{{last}}.log",
    benchmark:
        f"{BENCH}/rollout/{{experiment}}_members_{{first}}-{{last}}.tsv"
    threads: 2
    resources:
        gpu=0,  # the Slurm profile sets it (one GPU is plenty)
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff rollout --settings {params.settings:q} --checkpoint {input.checkpoint:q}"
        " --forcing {input.forcing:q} --initial-state {input.initial_state:q}"
        " --normalization {input.normalization:q} --statics {input.statics:q}"
        " --experiment {wildcards.experiment}"
        " --members {wildcards.first}-{wildcards.last} --output {output:q} --threads {threads}"
        " --no-progress > {log:q} 2>&1"


ALL_TARGETS.extend(ROLLOUT_FILES)
