# Ensemble rollouts (mdiff rollout): per experiment and member batch, periods.run_start ..
# periods.run_end from the encoded initial state. Batches are consecutive blocks of
# rollout.member_batch out of rollout.members (1-based, inclusive). A killed job resumes
# from {output}.resume.pt when rerun (not a declared output: Snakemake leaves it alone).
ROLLOUT_FILES = [
    rollout_file(experiment, *batch)
    for experiment in CFG.rollout.experiments
    for batch in P.member_batches(CFG.rollout.members, CFG.rollout.member_batch)
]


rule rollout:
    """One experiment x member batch: stream every month of every member to NetCDF."""
    input:
        checkpoint=f"{RESULTS}/model/checkpoint.pt",
        forcing=PREPARED_FORCING,
        initial_state=state_files([CFG.periods.run_start, CFG.periods.run_start]),
        statics=PREPARED_STATICS,
    output:
        f"{RESULTS}/rollout/{{experiment}}/members_{{first}}-{{last}}.nc",
    wildcard_constraints:
        experiment="|".join(P.EXPERIMENTS),
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
        " --statics {input.statics:q}"
        " --experiment {wildcards.experiment}"
        " --members {wildcards.first}-{wildcards.last} --output {output:q} --threads {threads}"
        " --no-progress > {log:q} 2>&1"


ALL_TARGETS.extend(ROLLOUT_FILES)
