"""`mdiff <command>`: one subcommand per workflow rule. This module alone parses command
lines and loads configs; each command calls plain functions of the package.

Commands that need settings accept ``--config FILE`` (a workflow config YAML) and/or
``--settings JSON`` (sections of the resolved config, as the Snakemake rules pass them).
Only the chosen command's modules are imported (the CMOR environment has no torch).
Two commands start another process first: `mdiff train --gpus N` (N > 1) relaunches itself
under torchrun, one process per GPU; `mdiff cmorize` and `mdiff cmorize-gr` move into the
CMOR interpreter (mdiff.aimip.cmor_env) when this one lacks CMOR.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mdiff import protocol

log = logging.getLogger("mdiff")
# Set in the environment of a command that moved into the CMOR interpreter: it never moves twice.
CMOR_MOVED = "MDIFF_IN_CMOR_INTERPRETER"


class UsageError(ValueError):
    """A command line that parses but does not make sense: one line, no traceback."""

    user_facing = True


@dataclass(frozen=True)
class Command:
    help: str
    arguments: tuple  # (flags, options) pairs for add_argument, or callables adding their own
    run: Callable  # run(args, cfg) -> exit status (None: 0); cfg is None without settings
    settings: bool = True  # takes --config/--settings
    needs_cmor: bool = False  # runs in the CMOR interpreter


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **options) -> tuple:
    return flags, options


def command(name: str, help: str, *arguments, settings: bool = True, needs_cmor: bool = False):
    """Register the decorated ``run(args, cfg)`` as `mdiff <name>`."""
    def register(run: Callable) -> Callable:
        COMMANDS[name] = Command(help, arguments, run, settings, needs_cmor)
        return run

    return register


def load_settings(args: argparse.Namespace):
    """The typed workflow config from --config and/or --settings."""
    from mdiff import config as C

    data: dict = {}
    source = "<defaults>"
    if getattr(args, "config", None):
        import yaml

        with open(args.config) as f:
            data = yaml.safe_load(f) or {}
        source = args.config
    if getattr(args, "settings", None):
        data = {**data, **json.loads(args.settings)}
        source = f"{source} + --settings"
    return C.from_dict(C.Config, data, source=source)


def _grid(text: str):
    """--grid NLATxNLON."""
    from mdiff.grid import LatLonGrid

    try:
        nlat, nlon = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NLATxNLON, e.g. 121x240") from None
    return LatLonGrid(nlat, nlon)


def _model_grid(cfg):
    from mdiff.grid import LatLonGrid

    return LatLonGrid(cfg.grid.nlat, cfg.grid.nlon)


def _require(args: argparse.Namespace, what: str, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise UsageError(f"mdiff {what}: missing {' '.join(missing)}")


EXPERIMENT = arg("--experiment", required=True, choices=protocol.EXPERIMENTS, help="experiment_id")
MEMBER = arg("--member", type=int, required=True, help="member number (1-based)")
FILE_LIST = arg("--file-list", help="write the list of written files here (JSON)")
CDO = arg("--cdo", default="cdo", help="CDO executable")
AIMIP_ROOT = "root of the AI-MIP tree ({results}/aimip)"


# ------------------------------------------------------------------------------ data


@command("synthesize", "write the synthetic world: prepared state, forcing, statics, truth",
         arg("--prepared", required=True, help="output folder of the prepared files"),
         arg("--truth", help="output folder of the truth files (omit to skip them)"))
def synthesize(args, cfg):
    from mdiff.data.synthetic import write_world

    s = cfg.synthetic
    log.info("synthetic world %dx%d, %s..%s, seed %d, %d realizations, SST offset %g K", cfg.grid.nlat,
             cfg.grid.nlon, cfg.periods.run_start, cfg.periods.run_end, s.seed, s.realizations, s.sst_offset)
    timings = write_world(_model_grid(cfg), cfg.periods.run_start, cfg.periods.run_end, s.seed, s.realizations,
                          s.sst_offset, Path(args.prepared), Path(args.truth) if args.truth else None)
    log.info("done: %s", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def _era5_groups(parser) -> None:
    from mdiff.variables import ERA5_GROUPS

    parser.add_argument("--group", required=True, choices=list(ERA5_GROUPS))


@command("fetch-era5", "download (CDS) or collect (local) raw ERA5 monthly means",
         _era5_groups,
         arg("--months", nargs=2, metavar=("FIRST", "LAST"), required=True,
             help="months YYYY-MM to fetch, within one year (invariant: the first is used)"),
         arg("--files", nargs="*", help="source local: the files to check"),
         arg("--output", required=True, help="cds: the NetCDF file to write; local: the JSON check record"))
def fetch_era5(args, cfg):
    from mdiff.data.era5 import fetch_group

    fetch_group(cfg.era5, args.group, *args.months, args.output, args.files)


@command("fetch-forcing", "download and verify the AI-MIP SST/sea-ice forcing file",
         arg("--output", required=True, help="where the AI-MIP forcing file goes"))
def fetch_forcing(args, cfg):
    from mdiff.data.forcing import fetch_aimip_forcing

    fetch_aimip_forcing(cfg.era5, args.output)


@command("regrid", "regrid raw ERA5 / forcing / statics to the model grid (CDO)",
         arg("what", choices=["weights", "statics", "state", "forcing"]),
         arg("--raw", nargs="+", help="raw input file(s): invariants / a year's ERA5 files / AI-MIP"),
         arg("--months", nargs=2, metavar=("FIRST", "LAST"),
             help="state: months YYYY-MM of one year; forcing: the run period"),
         arg("--weights", nargs=2, metavar=("FRACAREA", "DESTAREA"),
             help="weights files (normalised, plain); for `weights`: the files to write"),
         arg("--statics", help="state/forcing: the prepared statics (land fraction)"),
         arg("--output", help="the prepared file to write"))
def regrid(args, cfg):
    from mdiff.data import regrid as R

    grid = _model_grid(cfg)
    need = {"weights": ("raw", "weights"), "statics": ("raw", "weights", "output"),
            "state": ("raw", "months", "weights", "statics", "output"),
            "forcing": ("raw", "months", "statics", "output")}[args.what]
    _require(args, f"regrid {args.what}", *need)
    weights = dict(zip(("fracarea", "destarea"), args.weights, strict=True)) if args.weights else None
    if args.what == "weights":
        for norm, path in weights.items():
            R.make_weights(args.raw[0], grid, path, norm)
    elif args.what == "statics":
        R.prepare_statics(args.raw, grid, weights, args.output)
    elif args.what == "state":
        R.prepare_state_year(args.raw, *args.months, grid, weights, args.statics, args.output)
    else:
        R.prepare_forcing(args.raw[0], *args.months, grid, args.statics, args.output)


@command("stats", "normalisation statistics over the statistics period",
         arg("--state", nargs="+", required=True, help="prepared state files (per year)"),
         arg("--statics", required=True, help="prepared statics file"),
         arg("--output", required=True, help="statistics file to write (stats/normalization.nc)"))
def stats(args, cfg):
    from mdiff.data.statistics import compute_statistics, write_statistics

    grid = _model_grid(cfg)
    computed = compute_statistics(args.state, args.statics, grid, cfg.periods.stats)
    write_statistics(args.output, computed, grid)
    log.info("statistics over %s (%d months, %d files) -> %s", cfg.periods.stats, computed["months"],
             len(computed["files"]), args.output)


# ------------------------------------------------------------------------------ model


def torchrun_command(gpus: int, argv: list[str]) -> list[str] | None:
    """The command that runs ``mdiff <argv>`` as ``gpus`` DDP processes under torchrun, or None
    when it runs here (one GPU or none, or already a torchrun process)."""
    if gpus <= 1 or "WORLD_SIZE" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "mdiff.cli", *argv]


@command("train", "joint training of the CVAE and the latent diffusion model",
         arg("--model", required=True, help="model config YAML (config/model/*.yaml)"),
         arg("--state", nargs="+", required=True, help="prepared state files (prepared/state/*.nc)"),
         arg("--statics", required=True, help="prepared/statics.nc"),
         arg("--stats", required=True, help="normalisation statistics (stats/normalization.nc)"),
         arg("--output", required=True, help="the selected checkpoint (model/checkpoint.pt)"),
         arg("--model-card", help="Markdown model card to write"),
         arg("--log-file", help="JSON-lines training log to write"),
         arg("--curve", help="loss-curve PNG to write"),
         arg("--resume", action="store_true",
             help="continue from last.pt beside --output if it was made with the same configs"),
         arg("--fresh-if-corrupt", action="store_true",
             help="with --resume: if last.pt cannot be read, move it aside (last.pt.corrupt) and "
                  "start afresh instead of stopping with an error"),
         arg("--epochs", type=int, help="override train.epochs"),
         arg("--device", help="override train.device (auto|cpu|cuda)"),
         arg("--gpus", type=int, default=0,
             help="GPUs granted to the job (the rule passes its gpu resource): more than one "
                  "relaunches this command under torchrun, one DDP process per GPU"))
def train(args, cfg):
    from mdiff import config as C
    from mdiff.train import TrainOptions, run

    model_file = C.load_model_file(args.model)
    if args.epochs is not None:
        model_file.train.epochs = args.epochs
    if args.device:
        model_file.train.device = args.device
    return run(TrainOptions(
        state_files=list(args.state), statics=args.statics, stats=args.stats, output=args.output,
        model_file=model_file, grid=cfg.grid, periods=cfg.periods, model_card=args.model_card,
        log_file=args.log_file, curve=args.curve, resume=args.resume, fresh_if_corrupt=args.fresh_if_corrupt,
        source=cfg.source, model_path=args.model))


def _terminate(signum, frame):
    raise SystemExit(f"terminated by signal {signum}; rerun to resume from the last resume state")


@command("rollout", "ensemble rollout of one experiment and member batch",
         arg("--checkpoint", required=True, help="model/checkpoint.pt (model and normalisation statistics)"),
         arg("--forcing", required=True, help="prepared/forcing.nc (monthly means)"),
         arg("--initial-state", required=True, help="prepared state file holding periods.run_start"),
         arg("--statics", help="prepared/statics.nc: its land fraction checks that the forcing's SST is "
                               "defined over all open ocean"),
         EXPERIMENT,
         arg("--members", required=True, help="FIRST-LAST, 1-based inclusive (e.g. 1-5)"),
         arg("--output", required=True, help="rollout/{experiment}/members_{a:03d}-{b:03d}.nc"),
         arg("--no-progress", action="store_true", help="no progress bar"),
         arg("--threads", type=int, default=0,
             help="torch intra-op threads (0: torch's default; the rule passes its threads)"))
def rollout(args, cfg):
    import signal

    import torch

    from mdiff.rollout import parse_members, rollout_file

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    members = parse_members(args.members)
    if members[-1] > cfg.rollout.members:
        raise UsageError(f"--members {args.members}: rollout.members is {cfg.rollout.members}")
    # Slurm ends jobs with SIGTERM: leave cleanly so the partial file stays readable for a resume.
    signal.signal(signal.SIGTERM, _terminate)
    out = rollout_file(cfg, args.checkpoint, args.forcing, args.initial_state, args.experiment, members,
                       args.output, progress=not args.no_progress, statics=args.statics)
    log.info("wrote %s", out)


@command("params", "print the parameter count of a model config",
         arg("--model", required=True, help="model config YAML (config/model/*.yaml)"),
         arg("--grid", type=_grid, default="121x240", help="model grid NLATxNLON (default 121x240)"),
         settings=False)
def params(args, cfg):
    from mdiff.config import load_model_file
    from mdiff.nn.summary import parameter_table

    print(parameter_table(load_model_file(args.model).model, args.grid, args.model))


def _benchmarks(parser) -> None:
    from mdiff.bench import BENCHMARKS

    sub = parser.add_subparsers(dest="what", required=True)
    for name, (_, help_text, extra) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        for flags, options in extra:
            p.add_argument(*flags, **options)


@command("bench", "benchmarks (world, train, rollout, regrid, science)", _benchmarks, settings=False)
def bench(args, cfg):
    from mdiff.bench import BENCHMARKS

    BENCHMARKS[args.what][0](args)


@command("variables", "print the variable table (docs/variables.md)", settings=False)
def variables(args, cfg):
    from mdiff import variables as V

    print(f"{'channel':<14} {'role':<8} {'units':<11} {'transform':<9} {'AI-MIP':<22} report")
    for c in V.ALL:
        cmip = f"{c.cmip.name} [{c.cmip.units or c.units}]" if c.cmip else "-"
        shown = c.shown
        print(f"{c.name:<14} {c.role:<8} {c.units:<11} {c.transform:<9} {cmip:<22} {shown.label} [{shown.units}]")


@command("config-schema", "print the JSON schema of the workflow config",
         arg("--output", help="write here instead of printing"), settings=False)
def config_schema(args, cfg):
    from mdiff.config import schema_yaml

    text = schema_yaml()
    if args.output:
        from mdiff.fileio import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(text)
    else:
        print(text, end="")


# ------------------------------------------------------------------------------ AI-MIP


@command("cmorize", "rewrite rollout output as AI-MIP files with CMOR",
         arg("--input", required=True, help="rollout batch file containing the member"),
         EXPERIMENT, MEMBER,
         arg("--output-root", required=True, help=AIMIP_ROOT),
         FILE_LIST, needs_cmor=True)
def cmorize(args, cfg):
    from mdiff.aimip.cmorize import cmorize as write_member

    files = write_member(cfg, args.input, args.experiment, args.member, args.output_root, args.file_list)
    log.info("wrote %d files for %s r%d", len(files), args.experiment, args.member)


@command("cmorize-gr", "regrid one member's AI-MIP files to 1 degree (gr) with CDO and CMOR",
         EXPERIMENT, MEMBER,
         arg("--root", required=True, help=f"{AIMIP_ROOT}: reads the member's gn files, writes its gr files"),
         FILE_LIST, CDO, needs_cmor=True)
def cmorize_gr(args, cfg):
    from mdiff.aimip.regrid_gr import regrid_member

    files = regrid_member(cfg, args.root, args.experiment, args.member, args.file_list, args.cdo)
    log.info("wrote %d gr files for %s r%d", len(files), args.experiment, args.member)


@command("derive-tables", "maintainers: derive the AI-MIP CMOR tables (mdiff/aimip/tables) from PCMDI's "
                          "CMIP6 tables",
         arg("cmip6_tables", type=Path, help="folder with PCMDI's CMIP6_*.json"), settings=False)
def derive_tables(args, cfg):
    from mdiff.aimip.derive_tables import derive

    derive(args.cmip6_tables)


@command("validate", "validate the AI-MIP tree (PrePARE, CF checkers, AI-MIP checks)",
         arg("--root", required=True, help=AIMIP_ROOT),
         arg("--report-json", required=True),
         arg("--report-md", required=True),
         arg("--prepare-python", help="interpreter with CMOR's PrePARE (default: .venv-cmor/bin/python if "
                                      "present, else this one)"),
         arg("--cfchecks", help="cfchecks executable (default: beside python, or PATH)"),
         arg("--compliance-checker", help="compliance-checker executable"),
         arg("--jobs", type=int, default=2, help="checkers run at once"))
def validate(args, cfg):
    from mdiff.aimip.validate import write_report

    report = write_report(cfg, args.root, args.report_json, args.report_md, prepare_python=args.prepare_python,
                          cfchecks=args.cfchecks, compliance=args.compliance_checker, jobs=args.jobs)
    return 0 if report["passed"] else 1


@command("package", "the submission root: dataset card, licence, weights, sha256 manifest",
         arg("--root", required=True, help=AIMIP_ROOT),
         arg("--report", required=True, help="validation report.json (must have passed)"),
         arg("--checkpoint", required=True),
         arg("--model-card", required=True),
         arg("--loss-curve", required=True),
         arg("--scores", required=True, help="the evaluation's scores.json"),
         arg("--rollout", nargs="+", required=True, help="rollout files (member seeds)"))
def package(args, cfg):
    from mdiff.aimip.package import package as write_root

    write_root(cfg, args.root, args.report, args.checkpoint, args.model_card, args.loss_curve, args.scores,
               args.rollout)


@command("submit", "upload the validated tree to the AI-MIP object store",
         arg("--root", required=True, help=AIMIP_ROOT),
         arg("--report", required=True, help="validation report.json (must have passed)"),
         arg("--manifest", help="write the manifest (key, size, sha256) here"),
         arg("--dry-run", action="store_true", help="list what would be uploaded; upload nothing"),
         arg("--checksums", help="the submission root's MANIFEST.sha256: check local files before "
                                 "and every remote object after the upload against it"),
         arg("--verify-only", action="store_true", help="upload nothing; verify the remote copy"))
def submit(args, cfg):
    from mdiff.aimip.submit import submit as upload

    upload(cfg, args.root, args.report, args.manifest, args.dry_run, args.checksums, args.verify_only)


@command("evaluate", "evaluation metrics, figures and HTML report "
                     "(with --aimip-root: the organisers' metrics on the 1-degree gr tree)",
         arg("--rollout", nargs="+", help="rollout files of all experiments"),
         arg("--state", nargs="+", required=True, help="prepared state files (the reference)"),
         arg("--forcing", help="prepared/forcing.nc"),
         arg("--statics", help="prepared/statics.nc"),
         arg("--truth", help="the synthetic world's truth folder (source: synthetic)"),
         arg("--aimip-root", help=f"{AIMIP_ROOT} with gr files: score it the organisers' way instead"),
         CDO,
         arg("--output", required=True, help="report folder: index.html, scores.json, figures/ "
                                             "(with --aimip-root: scores.json, scores.md)"))
def evaluate(args, cfg):
    if args.aimip_root:
        import shutil

        from mdiff.evaluate.aimip_tree import AimipTreeError, score

        if shutil.which(args.cdo) is None:
            raise AimipTreeError(f"CDO not found ({args.cdo}): install it (apt-get install cdo)")
        doc = score(cfg, args.aimip_root, [Path(p) for p in args.state], args.output, args.cdo)
        log.info("%d scores: %s", len(doc["scores"]), Path(args.output) / "scores.json")
        return
    from mdiff.evaluate.report import evaluate as write_report
    from mdiff.evaluate.scores import Inputs

    _require(args, "evaluate", "rollout", "forcing", "statics")
    write_report(cfg, Inputs([Path(p) for p in args.rollout], [Path(p) for p in args.state], Path(args.forcing),
                             Path(args.statics), Path(args.truth) if args.truth else None), args.output)


# ------------------------------------------------------------------------------ main


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    return "usage: mdiff <command> [options]\n\ncommands:\n" + "\n".join(lines)


def parser_for(name: str) -> argparse.ArgumentParser:
    """The argument parser of `mdiff <name>`."""
    spec = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"mdiff {name}", description=spec.help)
    if spec.settings:
        parser.add_argument("--config", help="workflow config YAML (default: built-in defaults)")
        parser.add_argument("--settings", help="JSON with config sections (overrides --config)")
    for entry in spec.arguments:
        if callable(entry):
            entry(parser)
        else:
            flags, options = entry
            parser.add_argument(*flags, **options)
    return parser


def move_to_cmor_interpreter(argv: list[str]) -> None:
    """Replace this process by the same command in the CMOR interpreter, if this one lacks
    CMOR and the CMOR interpreter is another (else the command's own error says what is missing)."""
    from mdiff.aimip.cmor_env import cmor_python, has_cmor

    python = cmor_python()
    if has_cmor() or os.environ.get(CMOR_MOVED) or python == sys.executable:
        return
    os.execve(python, [python, "-m", "mdiff.cli", *argv], {**os.environ, CMOR_MOVED: "1"})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mdiff: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    spec = COMMANDS[name]
    args = parser_for(name).parse_args(rest)
    if spec.needs_cmor:
        move_to_cmor_interpreter(argv)
    launch = torchrun_command(args.gpus, argv) if name == "train" else None
    if launch is not None:
        os.execv(launch[0], launch)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_settings(args) if spec.settings else None
        return int(spec.run(args, cfg) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # Expected failures (bad input, bad config): one clear line, no traceback.
        from mdiff.config import ConfigError

        user_facing = isinstance(err, ConfigError | FileNotFoundError) or getattr(err, "user_facing", False)
        # Only a loaded mdiff.data.prepared can have raised its error (and it needs xarray,
        # which the CMOR environment lacks, so it is not imported here).
        prepared = sys.modules.get("mdiff.data.prepared")
        if user_facing or (prepared is not None and isinstance(err, prepared.PreparedDataError)):
            print(f"mdiff {name}: error: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
