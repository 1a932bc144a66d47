rule normalization_stats:
    """Per-channel mean/std after transforms, area-weighted, over the statistics period only."""
    input:
        state=state_files(CFG.periods.stats),
        statics=PREPARED_STATICS,
    output:
        NORMALIZATION,
    params:
        settings=settings("grid", "periods"),
    log:
        f"{LOGS}/normalization_stats.log",
    benchmark:
        f"{BENCH}/normalization_stats.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff stats --settings {params.settings:q} --state {input.state} "
        "--statics {input.statics} --output {output} > {log} 2>&1"


ALL_TARGETS.append(NORMALIZATION)
