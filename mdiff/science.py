"""`mdiff bench science`: the perfect-model benchmark of the emulator on the synthetic world.

Builds a world (cached per grid and world seed), its statistics, trains a model, runs the
control, +2K and +4K ensembles and evaluates them against the known truth, all in one
process through the same functions the workflow's rules call. Prints the headline scores
with their targets and, as the last line, all perfect-model scores as JSON.

    mdiff bench science --seed 1                                   # the default make-run setting
    mdiff bench science --setting long --seed 1                    # the science setting
    mdiff bench science --seed 1 --set model.linear_forcing=false  # one ablation

Settings: ``default`` is `make run`'s (config/config.yaml: 5-degree grid, config/model/small.yaml);
``long`` trains longer (config/model/science.yaml). ``--seed`` sets the training seed and the
rollout seed (the world stays the same unless ``--world-seed`` is given), so two seeds show
the noise of a score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import yaml

from mdiff import config as C
from mdiff import protocol
from mdiff.evaluate.targets import headline

log = logging.getLogger(__name__)

SETTINGS = {"default": "config/model/small.yaml", "long": "config/model/science.yaml"}

def _set(tree: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = tree
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


def overrides(pairs: list[str]) -> dict:
    """['model.linear_forcing=false', ...] -> a nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise C.ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. model.linear_forcing=false")
        key, value = pair.split("=", 1)
        _set(out, key.strip(), yaml.safe_load(value))
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run(setting: str, seed: int, workdir: Path, sets: list[str], world_seed: int = 0,
        members: int = 5, epochs: int | None = None, model_path: str | None = None,
        grid_text: str | None = None, keep_rollouts: bool = False) -> dict:
    """The whole benchmark; returns {"headline": rows, "scores": {name: value}, "timings": ...}."""
    import torch

    from mdiff.checkpoint import code_version
    from mdiff.data import prepared as P
    from mdiff.data.statistics import compute_statistics, write_statistics
    from mdiff.data.synthetic import write_world
    from mdiff.evaluate.report import evaluate
    from mdiff.evaluate.scores import Inputs
    from mdiff.grid import LatLonGrid
    from mdiff.rollout import rollout_file
    from mdiff.train import TrainOptions, train

    timings: dict[str, float] = {}
    cfg = C.load_config("config/config.yaml")
    cfg.synthetic.seed = world_seed
    cfg.rollout.seed = 20250101 + seed
    cfg.rollout.members = cfg.rollout.member_batch = members
    if grid_text:
        nlat, nlon = (int(n) for n in grid_text.split("x"))
        cfg.grid = C.GridConfig(nlat, nlon)
    grid = LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)
    model_path = model_path or SETTINGS[setting]
    with open(model_path) as f:
        model_data = _merge(yaml.safe_load(f), overrides(sets))
    model_data.setdefault("train", {})["seed"] = seed
    if epochs is not None:
        model_data["train"]["epochs"] = epochs
    model_file = C.from_dict(C.ModelFile, model_data, source=f"{model_path} + --set")

    code = code_version()["git"] or "unknown"
    world = workdir / f"world_{grid.nlat}x{grid.nlon}_seed{world_seed}_{code}"
    prepared, truth = world / "prepared", world / "truth"
    stats = world / "stats" / "normalization.nc"
    t0 = time.perf_counter()
    if not (world / "done").exists():
        write_world(grid, cfg.periods.run_start, cfg.periods.run_end, world_seed, cfg.synthetic.realizations,
                    0.0, prepared, truth, progress=False)
        state_files = sorted((prepared / "state").glob("*.nc"))
        years = range(int(cfg.periods.stats[0][:4]), int(cfg.periods.stats[1][:4]) + 1)
        write_statistics(stats, compute_statistics([p for p in state_files if int(p.stem) in years],
                                                   prepared / "statics.nc", grid, cfg.periods.stats), grid)
        (world / "done").write_text("complete\n")
    timings["world"] = time.perf_counter() - t0
    state_files = sorted((prepared / "state").glob("*.nc"))

    # the resolved configs (defaults included) and the code version: either changed, a new run
    what = {"model": C.to_dict(model_file), "grid": [grid.nlat, grid.nlon], "members": members,
            "world_seed": world_seed, "code": code}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
    run_dir = workdir / f"run_{setting}_seed{seed}_{digest}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.yaml").write_text(yaml.safe_dump(C.to_dict(model_file), sort_keys=False))
    t0 = time.perf_counter()
    checkpoint = run_dir / "model" / "checkpoint.pt"
    if not checkpoint.exists():
        opts = TrainOptions(state_files=[str(p) for p in state_files], statics=str(prepared / "statics.nc"),
                            stats=str(stats), output=str(checkpoint), model_file=model_file, grid=cfg.grid,
                            periods=cfg.periods, log_file=str(run_dir / "model" / "train_log.jsonl"),
                            resume=True, source="synthetic", model_path=model_path)
        if train(opts) != 0:
            raise RuntimeError("training stopped early")
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rollouts = []
    first = P.month_range(cfg.periods.run_start, cfg.periods.run_start)[0]
    initial = prepared / "state" / f"{str(first)[:4]}.nc"
    for experiment in protocol.EXPERIMENTS:
        out = run_dir / "rollout" / experiment / f"members_001-{members:03d}.nc"
        if not out.exists():
            rollout_file(cfg, checkpoint, prepared / "forcing.nc", initial, experiment,
                         list(range(1, members + 1)), out, progress=False)
        rollouts.append(out)
    timings["rollouts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    doc = evaluate(cfg, Inputs(rollouts, state_files, prepared / "forcing.nc", prepared / "statics.nc", truth),
                   run_dir / "report")
    timings["evaluate"] = time.perf_counter() - t0
    if not keep_rollouts:  # 3.2 GB a run at 37x72 (5 members x 3 experiments): the scores are what is kept
        shutil.rmtree(run_dir / "rollout")
    scores = {k: v["value"] for k, v in doc["scores"].items()}
    result = {"setting": setting, "seed": seed, "world_seed": world_seed, "set": sets, "members": members,
              "model": model_data, "run_dir": str(run_dir), "threads": torch.get_num_threads(),
              "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "headline": headline(scores, setting),
              "perfect": {k: v for k, v in scores.items() if k.startswith("perfect.")}}
    (run_dir / "science.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


SHORT_LABELS = ("corr", "amp", "land", "ocean", "var tas", "var psl", "ENSO", "NAO", "trend")


def records_table(folder: Path, names: list[str] | None = None) -> str:
    """Markdown table of the headline scores of ``folder/NAME_sSEED.json`` records, one row per
    NAME, seeds side by side (``--record`` writes them)."""
    import re

    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(folder).glob("*_s*.json")):
        match = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if match:
            runs.setdefault(match.group(1), {})[int(match.group(2))] = json.loads(path.read_text())
    lines = ["| configuration | " + " | ".join(SHORT_LABELS) + " | targets met |",
             "|---|" + "---|" * (len(SHORT_LABELS) + 1)]
    for name in names or list(runs):
        seeds = runs.get(name)
        if not seeds:
            continue
        docs = [seeds[s] for s in sorted(seeds)]
        cells = [" / ".join("n/a" if d["headline"][i]["value"] is None else f"{d['headline'][i]['value']:.2f}"
                            for d in docs) for i in range(len(SHORT_LABELS))]
        met = " / ".join(str(sum(r["met"] for r in d["headline"])) for d in docs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {met} of {len(SHORT_LABELS)} |")
    return "\n".join(lines)


def bench_science(args) -> None:
    if args.table:
        print(records_table(Path(args.workdir) / "records", args.table_rows))
        return
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(args.setting, args.seed, Path(args.workdir), args.set or [], args.world_seed, args.members,
                 args.epochs, args.model, args.grid, args.keep_rollouts)
    width = max(len(r["label"]) for r in result["headline"])
    print(f"science benchmark, setting {args.setting}, seed {args.seed}, {time.perf_counter() - t0:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in result['timings_s'].items())}); {result['run_dir']}")
    for r in result["headline"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        oracle = "" if r["oracle"] is None else f"  (oracle {r['oracle']:.3f})"
        print(f"  {'ok  ' if r['met'] else 'MISS'} {r['label']:<{width}} {value:>7}  target {r['target']}{oracle}")
    if args.record:
        records = Path(args.workdir) / "records"
        records.mkdir(parents=True, exist_ok=True)
        (records / f"{args.record}_s{args.seed}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"headline": {r["score"]: r["value"] for r in result["headline"]},
                      "met": sum(r["met"] for r in result["headline"]), "of": len(result["headline"]),
                      "perfect": result["perfect"]}))


ARGUMENTS = [
    (("--setting",), {"choices": list(SETTINGS), "default": "default",
                      "help": "default: make run's model; long: the science setting"}),
    (("--seed",), {"type": int, "default": 0, "help": "training and rollout seed"}),
    (("--world-seed",), {"type": int, "default": 0, "help": "seed of the synthetic world"}),
    (("--workdir",), {"default": "results/science", "help": "worlds and runs go here (cached)"}),
    (("--set",), {"action": "append", "metavar": "KEY=VALUE",
                  "help": "override a model-file key, e.g. model.linear_forcing=false (repeatable)"}),
    (("--members",), {"type": int, "default": 5, "help": "ensemble members per experiment"}),
    (("--epochs",), {"type": int, "help": "override train.epochs"}),
    (("--model",), {"help": "model config YAML (default: the setting's)"}),
    (("--threads",), {"type": int, "default": 0, "help": "torch threads (0: default)"}),
    (("--grid",), {"help": "NLATxNLON (default: config/config.yaml's, 37x72)"}),
    (("--record",), {"metavar": "NAME", "help": "also keep the result as WORKDIR/records/NAME_sSEED.json"}),
    (("--table",), {"action": "store_true", "help": "print the table of WORKDIR/records and exit"}),
    (("--keep-rollouts",), {"action": "store_true",
                            "help": "keep RUN/rollout (3.2 GB at 37x72; removed after scoring by default)"}),
    (("--table-rows",), {"nargs": "+", "metavar": "NAME", "help": "rows of --table, in this order"}),
]
