"""`mdiff params`: the parameter count of a model config (complex weights counted once)."""

from __future__ import annotations


def parse_grid(text: str):
    from mdiff.grid import LatLonGrid

    try:
        nlat, nlon = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid {text!r}: expected NLATxNLON, e.g. 121x240") from None
    return LatLonGrid(nlat, nlon)


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model config YAML (config/model/*.yaml)")
    parser.add_argument("--grid", default="121x240", help="model grid NLATxNLON (default 121x240)")


def main(args) -> int:
    from mdiff.config import load_model_file
    from mdiff.nn.model import build_model, parameter_count

    grid = parse_grid(args.grid)
    model = build_model(load_model_file(args.model).model, grid)
    for name, child in model.named_children():
        count = parameter_count(child)
        if count:
            print(f"  {name:<16} {count:>12,}")
    total = parameter_count(model)
    real = sum(p.numel() for p in model.parameters())
    print(f"{args.model} on {grid.nlat}x{grid.nlon}: {total:,} parameters "
          f"({total / 1e6:.2f} M; complex weights counted once; {real:,} real numbers)")
    return 0
