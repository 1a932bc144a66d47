"""Month-by-month stepping of a batch of members, and the members' fixed noise streams.

The stepper calls only the model's public API (``conditioning``, ``prepare_month``,
``encode``, ``sample_next``, ``decode``): what runs in a rollout is what training trains
and validates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mdiff.data import prepared as P

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def member_seed(base_seed: int, member: int) -> int:
    """Seed (0 <= seed < 2**63, fits int64) of member ``member`` (1-based): a fixed integer
    mix of (base seed, member), no salted ``hash()``, the same on every machine and run."""
    if member < 1:
        raise ValueError(f"member {member}: members are numbered from 1")
    return _splitmix64(_splitmix64(base_seed & _MASK64) ^ member) >> 1


def member_generators(base_seed: int, members: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(member_seed(base_seed, k)) for k in members]


class EnsembleStepper:
    """Month-by-month stepping of a batch of members; yields one month at a time.

    ``forcing``: normalised (T, 3, H, W) from ``Normalizer.forcing``; ``months``: (T,)
    datetime64[M]. Each month is prepared once (``MonthlyDiffusion.prepare_month``: the
    conditioning, at batch 1, and everything the diffusion steps reuse) for all members.
    ``bf16``: autocast to bf16 (the spectral transforms stay fp32).

    On a CPU with T torch threads the members step in T lanes, each a slice of the members
    on one thread (torch ops release the GIL): the denoiser's small batched matmuls scale
    poorly over threads within one op (MD-1.5, 10 members: 1.3x from 1 to 2 threads), while
    lanes keep every core on its own members (docs/benchmarks.md). Each member draws from
    its own generator, so a member's noise does not depend on its lane.
    """

    def __init__(self, model, forcing: np.ndarray, months: np.ndarray, device: torch.device,
                 bf16: bool = False):
        if forcing.shape[0] != months.shape[0]:
            raise ValueError(f"forcing has {forcing.shape[0]} months, the run {months.shape[0]}")
        self.model, self.device = model, torch.device(device)
        self.forcing = torch.from_numpy(np.ascontiguousarray(forcing, dtype=np.float32))
        self.months = months
        self.month_of_year = torch.as_tensor(P.month_of_year(months), dtype=torch.long)
        self.bf16 = bf16

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def conditioning(self, index: int):
        forcing = self.forcing[index: index + 1].to(self.device, non_blocking=True)
        month = self.month_of_year[index: index + 1].to(self.device)
        return self.model.conditioning(forcing, month)

    @torch.inference_mode()
    def initial(self, state: np.ndarray, members: int,
                forcing: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent (B, C, h, w) of month 0 for every member (the encoder mean) and the decoded
        month 0 (B, 37, H, W), normalised. ``forcing`` (3, H, W): the forcing the initial state
        was observed under (default: the run's own month 0)."""
        with self._autocast():
            if forcing is None:
                cond = self.conditioning(0)
            else:
                x = torch.from_numpy(np.asarray(forcing, dtype=np.float32))[None].to(self.device)
                cond = self.model.conditioning(x, self.month_of_year[:1].to(self.device))
            x = torch.from_numpy(np.asarray(state, dtype=np.float32))[None].to(self.device)
            mu, _ = self.model.encode(x, cond)
            decoded = self.model.decode(mu, cond)
        latent = mu.float().expand(members, -1, -1, -1).contiguous()
        return latent, decoded.float().expand(members, -1, -1, -1)

    @torch.inference_mode()
    def steps(self, latent: torch.Tensor, generators: Sequence[torch.Generator],
              start: int = 1) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (month index, latent, normalised state) for months start..T-1; ``latent`` is
        the latent of month ``start - 1``."""
        if len(generators) != latent.shape[0]:
            raise ValueError(f"{len(generators)} generators for {latent.shape[0]} members")
        threads = torch.get_num_threads()
        lanes = min(threads, latent.shape[0]) if self.device.type == "cpu" else 1
        bounds = np.linspace(0, latent.shape[0], lanes + 1).round().astype(int)
        pool = ThreadPoolExecutor(lanes, thread_name_prefix="rollout-lane") if lanes > 1 else None
        if pool is not None:
            torch.set_num_threads(1)  # one thread per lane (restored below)
        end = self.months.shape[0]
        try:
            month = self._prepare(start, None) if start < end else None  # month t + 1
            for index in range(start, end):
                if pool is None:
                    latent, state = self._step(latent, month, generators)
                    month = self._prepare(index + 1, month.constants) if index + 1 < end else None
                else:
                    parts = [pool.submit(self._step, latent[a:b], month, generators[a:b])
                             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
                    # the next month's preparation needs no member: it runs while the lanes step
                    month = self._prepare(index + 1, month.constants) if index + 1 < end else None
                    parts = [part.result() for part in parts]
                    latent, state = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                yield index, latent, state
        finally:
            if pool is not None:
                pool.shutdown()
                torch.set_num_threads(threads)

    def _prepare(self, index: int, constants):
        """``prepare_month`` of month ``index`` (``constants``: what depends on the weights
        alone, from an earlier month; None computes them)."""
        with self._autocast():
            return self.model.prepare_month(self.conditioning(index), constants)

    def _step(self, latent: torch.Tensor, month, generators: Sequence[torch.Generator]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Members' latents of month t -> (latent, normalised state) of month t + 1 (any thread:
        inference mode and autocast are per thread)."""
        with torch.inference_mode(), self._autocast():
            latent = self.model.sample_next(latent, month, list(generators)).float()
            return latent, self.model.decode(latent, month).float()
