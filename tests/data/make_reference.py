"""Write tiny_checkpoint.pt and tiny_expected.pt: the "old checkpoint still loads" baseline.

Run only on a deliberate format/architecture change (then commit both files):
    PYTHONPATH=. .venv/bin/python tests/data/make_reference.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from mdiff import config as C
from mdiff import variables as V
from mdiff.checkpoint import save
from mdiff.data.normalize import Normalizer
from mdiff.grid import LatLonGrid
from mdiff.nn.model import build_model
from mdiff.train import TrainOptions, checkpoint_payload

HERE = Path(__file__).parent


def main() -> None:
    from tests.test_train import TINY, reference_outputs

    grid = LatLonGrid(17, 32)
    torch.manual_seed(0)
    model = build_model(TINY, grid)
    model.set_statics(torch.randn(V.N_STATIC, *grid.shape))
    ema = build_model(TINY, grid)
    ema.load_state_dict(model.state_dict())
    with torch.no_grad():  # EMA different from raw, as after training
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    names = list(V.STATE_NAMES) + ["sst", "siconc"] + list(V.STATIC_NAMES)
    normalizer = Normalizer.from_dict({"channels": {n: {"mean": 0.0, "std": 1.0, "transform": V.channel(n).transform}
                                                    for n in names}})
    opts = TrainOptions([], "", "", str(HERE / "tiny_checkpoint.pt"), C.ModelFile(TINY, C.TrainConfig()),
                        C.GridConfig(17, 32))
    payload = checkpoint_payload(opts, normalizer, model, ema)
    payload["epoch"] = 1
    save(HERE / "tiny_checkpoint.pt", payload)
    g = torch.Generator().manual_seed(1)
    inputs = {"state": torch.randn(2, V.N_STATE, *grid.shape, generator=g),
              "forcing": torch.randn(2, V.N_FORCING, *grid.shape, generator=g),
              "forcing_next": torch.randn(2, V.N_FORCING, *grid.shape, generator=g),
              "month": torch.tensor([12, 6]), "seeds": torch.tensor([11, 12])}
    ema.eval()
    with torch.no_grad():
        outputs = reference_outputs(ema, inputs)
    torch.save({"inputs": inputs, "outputs": outputs}, HERE / "tiny_expected.pt")


if __name__ == "__main__":
    main()
