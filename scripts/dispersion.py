"""Where the emulator's variability goes wrong: the decoder, one diffusion step, or the free run.

For a trained checkpoint on the synthetic world's training months (1979-2014) it prints the
variance of monthly anomalies (emulator / truth, area-weighted) of psl, tas, z500 and ua250
and the NAO EOF variance for three things the free-running rollout is made of:

- reconstruction: decode(encode(truth)), the CVAE alone;
- one step: month t + 1 sampled by the diffusion from the *true* latent of month t;
- free run: members stepped from the first month, as a rollout does;

and, in the whitened latent the diffusion works in, the variance along the whitening's leading
principal directions and the denoiser's x0 error along them at several diffusion steps,
beside the error of the "do nothing" estimate x0 = sqrt(abar) x_t (right for unit-variance
data) (docs/science.md, "The circulation's excess variance"):

    source .venv/bin/activate
    python scripts/dispersion.py RUN WORLD

RUN is a run folder of `mdiff bench science` (results/science/run_<setting>_seed<S>_<hash>),
WORLD its world folder (results/science/world_37x72_seed0_<version>). One thread, ~1 min at
37x72 with 4 members.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mdiff import checkpoint
from mdiff import variables as V
from mdiff.data import prepared as P
from mdiff.data.dataset import load_period
from mdiff.evaluate import metrics as M
from mdiff.nn.diffusion import add_noise, x0_from_v
from mdiff.rollout import member_generators

CHANNELS = ("psl", "tas", "z500", "ua250")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("world", type=Path)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--period", nargs=2, default=["1979-01", "2014-12"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ck = checkpoint.load(args.run / "model" / "checkpoint.pt")
    model, norm, grid = ck.model, ck.normalizer, ck.grid
    files = sorted((args.world / "prepared" / "state").glob("*.nc"))
    months, state, ocean = load_period(files, grid, *args.period)
    moy = P.month_of_year(months)
    x = torch.from_numpy(norm.normalize(state, V.STATE_NAMES, moy))
    forcing = torch.from_numpy(norm.forcing(ocean[:, 0], ocean[:, 1], months=moy))
    month_of_year = torch.from_numpy(moy.astype(np.int64))
    n, k = len(months), args.members

    def conditioning(a: int, b: int):
        return model.conditioning(forcing[a:b], month_of_year[a:b])

    def ratios(decoded: np.ndarray) -> dict:
        """(members, T, 37, H, W) physical -> variance ratios to the truth."""
        out = {}
        for name in CHANNELS:
            i = V.STATE_NAMES.index(name)
            out[name] = round(M.interannual_variance(grid, decoded[:, :, i], months)
                              / M.interannual_variance(grid, state[None, :, i], months), 3)
        psl = V.STATE_NAMES.index("psl")
        out["nao"] = round(M.nao_eof(grid, decoded[:, :, psl], months)["variance"]
                           / M.nao_eof(grid, state[None, :, psl], months)["variance"], 3)
        return out

    def with_first_month(normalised: torch.Tensor) -> np.ndarray:
        """(members, T - 1, ...) normalised months 1.. -> physical months 0.. (month 0: truth)."""
        rest = norm.denormalize(normalised.numpy(), V.STATE_NAMES, moy[1:])
        return np.concatenate([np.repeat(state[None, :1], normalised.shape[0], 0), rest], 1)

    eofs = model.latent_eofs
    if eofs.shape[0] == 0:
        raise SystemExit(f"{args.run}: latent_standardization is not pca; nothing to project on")

    def pc_variance(latents: torch.Tensor) -> list[float]:
        """Variance of the whitened latents along the leading principal directions 1-8."""
        w = model.standardise(latents.flatten(0, 1) if latents.dim() == 5 else latents).flatten(1)
        return [round(float(v), 2) for v in (w @ eofs.T).var(0)[:8]]

    report: dict = {}
    with torch.inference_mode():
        mus, logvars, recon = [], [], []
        for a in range(0, n, 48):
            cond = conditioning(a, min(a + 48, n))
            mu, logvar = model.encode(x[a:a + 48], cond)
            mus.append(mu)
            logvars.append(logvar)
            recon.append(model.decode(mu, cond))
        mu, logvar = torch.cat(mus), torch.cat(logvars)
        report["reconstruction"] = ratios(norm.denormalize(torch.cat(recon).numpy(), V.STATE_NAMES, moy)[None])

        generators = member_generators(123, range(1, k + 1))
        one, one_latent = [], []
        for t in range(n - 1):
            month = model.prepare_month(conditioning(t + 1, t + 2))
            z = model.sample_next(mu[t:t + 1].expand(k, -1, -1, -1).contiguous(), month, generators)
            one_latent.append(z)
            one.append(model.decode(z, month))
        report["one_step"] = ratios(with_first_month(torch.stack(one, 1)))

        latent, free, free_latent = mu[:1].expand(k, -1, -1, -1).contiguous(), [], []
        for t in range(1, n):
            month = model.prepare_month(conditioning(t, t + 1))
            latent = model.sample_next(latent, month, generators)
            free_latent.append(latent)
            free.append(model.decode(latent, month))
        report["free_run"] = ratios(with_first_month(torch.stack(free, 1)))
        report["pc_variance"] = {"truth": pc_variance(mu), "one_step": pc_variance(torch.stack(one_latent, 1)),
                                 "free_run": pc_variance(torch.stack(free_latent, 1))}

        # the denoiser's x0 error along the principal directions, on the training pairs
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        month_of_year = torch.as_tensor(np.asarray(moy))
        prior, target = model.standardise(z[:-1], month_of_year[:-1]), model.standardise(mu[1:], month_of_year[1:])
        cond_latent = conditioning(1, n).latent
        errors = {}
        for step in sorted({model.config.diffusion_steps, *range(model.config.diffusion_steps * 4 // 5, 0, -3)},
                           reverse=True):
            t = torch.full((n - 1,), step, dtype=torch.long)
            x_t = add_noise(model.schedule, target, torch.randn_like(target), t)
            v = torch.cat([model.predict_v(x_t[a:a + 64], t[a:a + 64], prior[a:a + 64], cond_latent[a:a + 64])
                           for a in range(0, n - 1, 64)])
            error = (x0_from_v(model.schedule, x_t, v, t) - target).flatten(1)
            trivial = (float(model.schedule.alpha_bar[step]) ** 0.5 * x_t - target).flatten(1)
            along = (error @ eofs.T).square().mean(0)
            errors[step] = {"denoiser_pc1_8": round(float(along[:8].mean()), 3),
                            "denoiser_all_pcs": round(float(along.mean()), 3),
                            "do_nothing_pc1_8": round(float((trivial @ eofs.T).square().mean(0)[:8].mean()), 3),
                            "denoiser_per_direction": round(float(error.square().mean()), 3)}
        report["x0_error_by_step"] = errors
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
