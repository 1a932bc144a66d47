# Joint training of the CVAE and the latent diffusion model (mdiff train).
# Resumable: last.pt beside the checkpoint is written every epoch and on SIGTERM (Slurm
# pre-emption); rerunning the rule continues from it when configs and statistics match.
MODEL_DIR = f"{RESULTS}/model"
CHECKPOINT = f"{MODEL_DIR}/checkpoint.pt"
MODEL_CARD = f"{MODEL_DIR}/model_card.md"


rule train:
    """Train on periods.train, select on periods.validate; the EMA model is the checkpoint."""
    input:
        state=state_files(CFG.periods.train, CFG.periods.validate),
        statics=PREPARED_STATICS,
        stats=NORMALIZATION,
        model=CFG.model,
    output:
        checkpoint=CHECKPOINT,
        card=report(MODEL_CARD, caption="../report/model_card.rst", category="Model"),
        log=f"{MODEL_DIR}/train_log.jsonl",
        curve=report(
            f"{MODEL_DIR}/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Model",
        ),
    params:
        settings=settings("grid", "periods", "model", "source"),
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,  # the Slurm profile sets it; > 1: `mdiff train` runs under torchrun (DDP, one process per GPU)
    conda:
        "../../envs/mdiff.yaml"
    shell:
        "mdiff train --settings {params.settings:q} --model {input.model:q} --gpus {resources.gpu}"
        " --state {input.state} --statics {input.statics:q} --stats {input.stats:q}"
        " --output {output.checkpoint:q} --model-card {output.card:q}"
        " --log-file {output.log:q} --curve {output.curve:q} --resume > {log} 2>&1"


ALL_TARGETS.extend([CHECKPOINT, MODEL_CARD])
