# Real data (source: era5): raw ERA5 monthly means (CDS or a local copy) and the AI-MIP
# forcing, conservatively regridded with CDO to the prepared contract, as synthesize_world
# writes it for the synthetic world. Per-year files: a changed raw year reruns that year's
# regridding and what reads it, nothing else. See docs/real-data.md.
import json

from mdiff.data import era5 as E

ERA5 = CFG.era5
RAW = ERA5.raw_dir
WEIGHTS = [f"{RESULTS}/prepared/weights/{norm}.nc" for norm in ("fracarea", "destarea")]
AIMIP_FORCING = f"{RAW}/aimip/{ERA5.forcing_file}"
INVARIANT_MONTHS = (CFG.periods.run_start, CFG.periods.run_start)


def year_months(year):
    """(first, last) months of a year within the run: only they matter to that year's rules."""
    return E.year_months(int(year), CFG.periods.run_start, CFG.periods.run_end)


def era5_settings(*keys):
    """Only the era5 keys a rule depends on (params: changing another key reruns nothing)."""
    return json.dumps({"era5": {k: getattr(ERA5, k) for k in keys}}, sort_keys=True)


if ERA5.source == "cds":

    def raw_files(group, year=None):
        return [f"{RAW}/invariant.nc"] if group == E.INVARIANT else [f"{RAW}/{year}/{group}.nc"]

    def raw_records(year):
        return []

    rule fetch_era5:
        """One CDS request (a group of the variable table) for one year; resumable, never refetched."""
        output:
            raw=f"{RAW}/{{year}}/{{group}}.nc",
            record=f"{RAW}/{{year}}/{{group}}.nc.json",
        wildcard_constraints:
            year=r"\d{4}",
            group="|".join(E.YEARLY_GROUPS),
        params:
            months=lambda w: " ".join(year_months(w.year)),
            settings=era5_settings("source", "max_retries", "retry_backoff_s"),
        log:
            f"{LOGS}/fetch_era5/{{year}}_{{group}}.log",
        benchmark:
            f"{BENCH}/fetch_era5/{{year}}_{{group}}.tsv"
        resources:
            mem_mb=2000,
            runtime=24 * 60,
            cds_requests=1,  # `--resources cds_requests=N` caps concurrent CDS requests
        conda:
            "../../envs/mdiff.yaml"
        shell:
            "mdiff fetch-era5 --settings {params.settings:q} --group {wildcards.group} "
            "--months {params.months} --output {output.raw} > {log} 2>&1"

    rule fetch_era5_invariant:
        """The ERA5 invariants (orography statistics, land-sea mask), once."""
        output:
            raw=f"{RAW}/invariant.nc",
            record=f"{RAW}/invariant.nc.json",
        params:
            months=" ".join(INVARIANT_MONTHS),
            settings=era5_settings("source", "max_retries", "retry_backoff_s"),
        log:
            f"{LOGS}/fetch_era5/invariant.log",
        resources:
            mem_mb=2000,
            runtime=6 * 60,
            cds_requests=1,
        conda:
            "../../envs/mdiff.yaml"
        shell:
            "mdiff fetch-era5 --settings {params.settings:q} --group invariant "
            "--months {params.months} --output {output.raw} > {log} 2>&1"

else:

    def raw_files(group, year=None):
        pattern = ERA5.local_patterns.get(group)
        if pattern is None:
            raise ValueError(
                f"era5.source is local: era5.local_patterns needs a pattern for group {group!r}"
            )
        return E.local_files(pattern, None if group == E.INVARIANT else int(year), group)

    def raw_records(year):
        return [f"{RAW}/{year}/{group}.check.json" for group in E.YEARLY_GROUPS]

    rule fetch_era5:
        """Check a local ERA5 copy (readable, variables, grid, months) and record it."""
        input:
            lambda w: raw_files(w.group, w.year),
        output:
            f"{RAW}/{{year}}/{{group}}.check.json",
        wildcard_constraints:
            year=r"\d{4}",
            group="|".join(E.YEARLY_GROUPS),
        params:
            months=lambda w: " ".join(year_months(w.year)),
            settings=era5_settings("source"),
        log:
            f"{LOGS}/fetch_era5/{{year}}_{{group}}.log",
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../../envs/mdiff.yaml"
        shell:
            "mdiff fetch-era5 --settings {params.settings:q} --group {wildcards.group} "
            "--months {params.months} --files {input:q} --output {output} > {log} 2>&1"


rule fetch_forcing:
    """The AI-MIP SST/sea-ice file (Zenodo), resumable, checked against era5.forcing_sha256."""
    output:
        raw=AIMIP_FORCING,
        record=f"{AIMIP_FORCING}.json",
    params:
        settings=era5_settings("forcing_url", "forcing_sha256", "max_retries", "retry_backoff_s"),
    log:
        f"{LOGS}/fetch_forcing.log",
    resources:
        mem_mb=1000,
        runtime=6 * 60,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff fetch-forcing --settings {params.settings:q} --output {output.raw} > {log} 2>&1"


rule remap_weights:
    """CDO conservative weights (normalised: fracarea; plain: destarea), made once, used by all years."""
    input:
        raw_files(E.INVARIANT),
    output:
        WEIGHTS,
    params:
        settings=settings("grid"),
    log:
        f"{LOGS}/remap_weights.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff regrid weights --settings {params.settings:q} --raw {input[0]:q} "
        "--weights {output} > {log} 2>&1"


rule prepare_statics:
    """ERA5 invariants on the model grid: orography statistics and land fraction."""
    input:
        raw=raw_files(E.INVARIANT),
        weights=WEIGHTS,
    output:
        PREPARED_STATICS,
    params:
        settings=settings("grid"),
    log:
        f"{LOGS}/prepare_statics.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff regrid statics --settings {params.settings:q} --raw {input.raw:q} "
        "--weights {input.weights} --output {output} > {log} 2>&1"


rule regrid_state:
    """One year of ERA5 (state + training forcing) on the model grid, names and units of the table."""
    input:
        raw=lambda w: list(dict.fromkeys(f for g in E.YEARLY_GROUPS for f in raw_files(g, w.year))),
        records=lambda w: raw_records(w.year),
        weights=WEIGHTS,
        statics=PREPARED_STATICS,
    output:
        f"{RESULTS}/prepared/state/{{year}}.nc",
    wildcard_constraints:
        year=r"\d{4}",
    params:
        months=lambda w: " ".join(year_months(w.year)),
        settings=settings("grid"),
    log:
        f"{LOGS}/regrid_state/{{year}}.log",
    benchmark:
        f"{BENCH}/regrid_state/{{year}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff regrid state --settings {params.settings:q} --raw {input.raw:q} "
        "--months {params.months} --weights {input.weights} --statics {input.statics} "
        "--output {output} > {log} 2>&1"


rule prepare_forcing:
    """AI-MIP start-of-month SST/sea ice -> monthly means on the model grid (METHOD.md, defect 4)."""
    input:
        raw=AIMIP_FORCING,
        statics=PREPARED_STATICS,
    output:
        PREPARED_FORCING,
    params:
        months=f"{CFG.periods.run_start} {CFG.periods.run_end}",
        settings=settings("grid"),
    log:
        f"{LOGS}/prepare_forcing.log",
    benchmark:
        f"{BENCH}/prepare_forcing.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff regrid forcing --settings {params.settings:q} --raw {input.raw:q} "
        "--months {params.months} --statics {input.statics} --output {output} > {log} 2>&1"
