# The evaluation report (docs/evaluation.md): AI-MIP metrics E1-E3 and E5, NAO, spread,
# stability and, on the synthetic world, perfect-model scores against the known truth.
import os

EVALUATE_TRUTH = (
    [f"{RESULTS}/truth/response.nc", f"{RESULTS}/truth/modes.nc", f"{RESULTS}/truth/realizations"]
    if CFG.source == "synthetic"
    else []
)
REPORT = f"{RESULTS}/report"


rule evaluate:
    """Scores, figures and a one-page HTML report of the three AI-MIP runs."""
    input:
        rollout=ROLLOUT_FILES,
        state=PREPARED_STATE,
        forcing=PREPARED_FORCING,
        statics=PREPARED_STATICS,
        truth=EVALUATE_TRUTH,
    output:
        html=f"{REPORT}/index.html",
        scores=f"{REPORT}/scores.json",
        figures=report(
            directory(f"{REPORT}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Evaluation",
        ),
    params:
        settings=settings("grid", "periods", "source", "evaluate"),
        truth=lambda w, input: f"--truth {os.path.dirname(input.truth[0])}" if input.truth else "",
        output=lambda w, output: os.path.dirname(output.html),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff evaluate --settings {params.settings:q} --rollout {input.rollout} "
        "--state {input.state} --forcing {input.forcing} --statics {input.statics} "
        "{params.truth} --output {params.output} > {log} 2>&1"


ALL_TARGETS.extend([f"{REPORT}/index.html", f"{REPORT}/scores.json"])


rule evaluate_gr:
    """The organisers' metrics (E1-E3, E5) on the 1-degree gr tree (aimip.grids has gr)."""
    input:
        files=[
            f
            for e in CFG.rollout.experiments
            for k in AIMIP_MEMBERS
            for f in aimip_files("gr", e, k)
        ],
        state=PREPARED_STATE,
    output:
        scores=f"{REPORT}/aimip_gr/scores.json",
        table=report(
            f"{REPORT}/aimip_gr/scores.md",
            caption="../report/aimip_gr.rst",
            category="Evaluation",
        ),
    params:
        settings=settings("grid", "periods", "rollout", "aimip", "evaluate"),
        root=lambda w, input: drs.tree_root(input.files[0], CFG.aimip),
        output=lambda w, output: os.path.dirname(output.scores),
    log:
        f"{LOGS}/evaluate_gr.log",
    benchmark:
        f"{BENCH}/evaluate_gr.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff evaluate --settings {params.settings:q} --aimip-root {params.root:q} "
        "--state {input.state} --output {params.output:q} > {log:q} 2>&1"


if "gr" in CFG.aimip.grids:
    ALL_TARGETS.append(f"{REPORT}/aimip_gr/scores.json")
