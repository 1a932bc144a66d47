"""`mdiff <command>`: one subcommand per workflow rule.

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``main(args)``; only the chosen module is imported (the CMOR environment has no torch).
Commands that need settings accept ``--config FILE`` (a workflow config YAML) and/or
``--settings JSON`` (sections of the resolved config, as the Snakemake rules pass them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("mdiff.data.synthetic", "write the synthetic world: prepared state, forcing, statics, truth"),
    "fetch-era5": ("mdiff.data.era5", "download (CDS) or collect (local) raw ERA5 monthly means"),
    "fetch-forcing": ("mdiff.data.forcing", "download and verify the AI-MIP SST/sea-ice forcing file"),
    "regrid": ("mdiff.data.regrid", "regrid raw ERA5 / forcing / statics to the model grid (CDO)"),
    "stats": ("mdiff.data.statistics", "normalisation statistics over the statistics period"),
    "train": ("mdiff.train", "joint training of the CVAE and the latent diffusion model"),
    "rollout": ("mdiff.rollout", "ensemble rollout of one experiment and member batch"),
    "cmorize": ("mdiff.aimip.cmorize", "rewrite rollout output as AI-MIP files with CMOR"),
    "cmorize-gr": ("mdiff.aimip.regrid_gr", "regrid one member's AI-MIP files to 1 degree (gr) with CDO and CMOR"),
    "validate": ("mdiff.aimip.validate", "validate the AI-MIP tree (PrePARE, CF checkers, AI-MIP checks)"),
    "package": ("mdiff.aimip.package", "the submission root: dataset card, licence, weights, sha256 manifest"),
    "submit": ("mdiff.aimip.submit", "upload the validated tree to the AI-MIP object store"),
    "evaluate": ("mdiff.evaluate.report", "evaluation metrics, figures and HTML report "
                 "(with --aimip-root: the organisers' metrics on the 1-degree gr tree)"),
    "bench": ("mdiff.bench", "benchmarks (world, train, rollout, regrid)"),
    "params": ("mdiff.nn.summary", "print the parameter count of a model config"),
    "config-schema": ("mdiff.config_schema_cmd", "print the JSON schema of the workflow config"),
}


# A command whose work depends on one option: (command, option) -> module.
VARIANTS: dict[tuple[str, str], str] = {
    ("evaluate", "--aimip-root"): "mdiff.evaluate.aimip_tree",  # score the AI-MIP gr tree
}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="workflow config YAML (default: built-in defaults)")
    parser.add_argument("--settings", help="JSON with config sections (overrides --config)")


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


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "usage: mdiff <command> [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mdiff: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = next((m for (cmd, opt), m in VARIANTS.items()
                        if cmd == name and any(a == opt or a.startswith(opt + "=") for a in rest)),
                       COMMANDS[name][0])
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mdiff {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return int(module.main(args) or 0)
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
