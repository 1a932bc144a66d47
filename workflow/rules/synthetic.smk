rule synthesize_world:
    """The embedded default: an ERA5-like world with known truth, in the prepared contract."""
    output:
        state=PREPARED_STATE,
        forcing=PREPARED_FORCING,
        statics=PREPARED_STATICS,
        response=f"{RESULTS}/truth/response.nc",
        modes=f"{RESULTS}/truth/modes.nc",
        realizations=directory(f"{RESULTS}/truth/realizations"),
    params:
        settings=settings("grid", "periods", "synthetic"),
        prepared=lambda w, output: os.path.dirname(output.forcing),
        truth=lambda w, output: os.path.dirname(output.response),
    log:
        f"{LOGS}/synthesize_world.log",
    benchmark:
        f"{BENCH}/synthesize_world.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff synthesize --settings {params.settings:q} --prepared {params.prepared} "
        "--truth {params.truth} > {log} 2>&1"


SYNTHETIC_TRUTH = f"{RESULTS}/truth"
