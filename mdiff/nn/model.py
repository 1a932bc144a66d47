"""The Monthly Diffusion model (MD-1.5): spectral CVAE + conditional latent diffusion.

One API serves training and rollouts. All fields are *normalised* (see
``mdiff.data.normalize``): states (B, 37, H, W), forcing (B, 3, H, W) from
``Normalizer.forcing``. One month step of a rollout, from month t to month t + 1::

    cond_t = model.conditioning(forcing[t], month_of(t))          # once per month
    mu, logvar = model.encode(state_t, cond_t)                    # once, initial state
    latent = mu                                                   # or a sample of N(mu, sigma)
    for each month t -> t + 1:
        cond_next = model.conditioning(forcing[t + 1], month_of(t + 1))   # once per month
        latent = model.sample_next(latent, cond_next, generators)         # month t + 1
        state_next = model.decode(latent, cond_next)                      # month t + 1

Which month's conditioning goes where (METHOD.md defect 1: the published code feeds the
seasonality of month t where month t + 1 belongs):

* ``encode(state_t, cond_t)``: the state's own month t.
* ``sample_next(latent_t, cond_next, ...)``: month **t + 1**, the month being sampled.
* ``decode(latent_t1, cond_next)``: the latent's own month, t + 1.

A ``Conditioning`` computed for a batch of 1 broadcasts to any number of members, so
a rollout computes it once per month for all members (defect 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mdiff import variables as V
from mdiff.config import ModelConfig
from mdiff.grid import LatLonGrid
from mdiff.nn.diffusion import CosineSchedule, TimeEmbedding, add_noise, ancestral_sample, v_target
from mdiff.nn.layers import BlockContext, LinearForcingResponse, SphereBlock
from mdiff.nn.seasonality import SeasonalityEmbedding
from mdiff.nn.spectral import SpectralOperators, SphereGrid, TruncatedISHT, TruncatedSHT

LOGVAR_RANGE = (-12.0, 6.0)  # keeps exp(logvar) finite early in training
# A prepared month's members go through the denoiser and decoder in chunks of at most this
# many: the work per member is the same, but a chunk's full-resolution tensors (48 x 121x240
# floats = 5.6 MB a member) stay closer to the caches (50 members at once ran ~1.5x slower
# per member than 5; docs/benchmarks.md).
MEMBER_CHUNK = 8
# The decoder's tail works on full-resolution tensors at every step, so on a CPU it keeps
# its chunks smaller still: 10 MD-1.5 members decoded in 162-191 ms in chunks of 2 against
# 274-298 ms in chunks of 8 (2 threads, 32 MB L3; the denoiser, on the latent grid, is
# fastest at 8). On a GPU the decoder takes the denoiser's chunks.
DECODE_CHUNK_CPU = 2


@dataclass
class Conditioning:
    """Conditioning maps of one month: forcing (3) [+ its global-mean SST anomaly], seasonality,
    statics (5).

    ``full`` lives on the model grid (B, K, H, W), ``latent`` on the latent grid (B, K, h, w);
    ``response`` (B, 37, H, W) is the linear forced response the decoder adds (or None);
    ``month`` (B,) the month of year in 1..12 (the latent's seasonal whitening scales).
    """

    full: torch.Tensor
    latent: torch.Tensor
    response: torch.Tensor | None = None
    month: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.full.shape[0]

    def _map(self, fn, month_fn) -> Conditioning:
        return Conditioning(fn(self.full), fn(self.latent), None if self.response is None else fn(self.response),
                            None if self.month is None else month_fn(self.month))

    def detached(self) -> Conditioning:
        """The same maps with the linear response detached (the CVAE does not train it)."""
        return self if self.response is None else Conditioning(self.full, self.latent, self.response.detach(),
                                                               self.month)

    def broadcast(self, batch: int) -> Conditioning:
        """The same conditioning for ``batch`` members (a view, no copy)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ValueError(f"conditioning for {self.batch} samples cannot serve a batch of {batch}; "
                             "expected a batch of 1 (broadcast) or the same batch")
        return self._map(lambda x: x.expand(batch, -1, -1, -1), lambda m: m.expand(batch))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        response = None if parts[0].response is None else torch.cat([p.response for p in parts])
        month = None if parts[0].month is None else torch.cat([p.month for p in parts])
        return Conditioning(torch.cat([p.full for p in parts]), torch.cat([p.latent for p in parts]), response, month)

    def to(self, *args, **kwargs) -> Conditioning:
        # dtype casts apply to the maps; the month follows the device only
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        return self._map(lambda x: x.to(*args, **kwargs), lambda m: m if device is None else m.to(device))


@dataclass
class RunConstants:
    """What stays fixed while the weights do (a rollout): the denoiser's and decoder's folded
    spectral operators, the diffusion-time maps (T, t, h, w) and their spectral images."""

    denoiser_ops: SpectralOperators
    decoder_ops: SpectralOperators
    time: torch.Tensor
    time_spectra: torch.Tensor  # (M, X, T, O)


@dataclass
class PreparedMonth:
    """Everything fixed for one month of a rollout (``MonthlyDiffusion.prepare_month``): its
    conditioning, the decoder's context and the denoiser's context for every diffusion step
    (conditioning, embedding and time maps already through the spectral analysis and
    synthesis; the norms' modulations). ``sample_next`` and ``decode`` accept it in place
    of the ``Conditioning`` and then only the members' own inputs run per member."""

    cond: Conditioning
    decoder: BlockContext
    steps: dict[int, BlockContext]  # diffusion step 1..T -> the denoiser's context
    constants: RunConstants

    @property
    def batch(self) -> int:
        return self.cond.batch


class MonthlyDiffusion(nn.Module):
    """Encoder, decoder and denoiser (one SFNO-style block each), seasonality, schedule."""

    def __init__(self, config: ModelConfig, grid: LatLonGrid, n_state: int | None = None,
                 n_forcing: int | None = None, n_static: int | None = None):
        super().__init__()
        self.config, self.grid = config, grid
        # channel counts per role: the variable table's (a checkpoint passes its stored table's)
        self.n_state = V.N_STATE if n_state is None else n_state
        self.n_forcing = V.N_FORCING if n_forcing is None else n_forcing
        self.n_static = V.N_STATIC if n_static is None else n_static
        full = SphereGrid.model(grid, config.lmax)
        latent = SphereGrid.latent(grid, config.squeeze, config.latent_lmax)
        self.full_grid, self.latent_grid = full, latent
        c, k, t = config.latent_channels, self.cond_channels, config.time_embed_channels
        e, ratio, f = config.embed_channels, config.mlp_ratio, config.film_embed_channels
        self.seasonality = SeasonalityEmbedding(config.seasonal_channels, config.seasonal_basis, full.shape)
        self.encoder = SphereBlock(self.n_state, 2 * c, k, k, full, latent, rank=config.encoder_rank,
                                   hidden=config.hidden_channels, embed_channels=e, mlp_ratio=ratio,
                                   film_embed_channels=f)
        self.decoder = SphereBlock(c, self.n_state, k, k, latent, full, rank=config.decoder_rank,
                                   hidden=config.decoder_hidden_channels or config.hidden_channels,
                                   embed_channels=e, mlp_ratio=config.decoder_mlp_ratio or ratio,
                                   film_embed_channels=f)
        self.denoiser = SphereBlock(2 * c + t, c, k, k + t, latent, latent, rank=config.denoiser_rank,
                                    hidden=config.denoiser_hidden_channels or config.hidden_channels,
                                    embed_channels=e, mlp_ratio=ratio, film_embed_channels=f)
        # the linear path reads sst, siconc and the G map (not the fixed land mask)
        # with linear_forcing_gains "seasonal" its gains also read the seasonality maps and sea ice
        seasonal_gains = config.seasonal_channels + 1 if config.linear_forcing_gains == "seasonal" else 0
        self.linear_forcing = (LinearForcingResponse(self.n_forcing, self.n_state, self.n_static, full,
                                                     channels=config.linear_forcing_channels,
                                                     rank=config.linear_forcing_rank, gain_channels=seasonal_gains,
                                                     kernel=config.linear_forcing_kernel)
                               if config.linear_forcing else None)
        self.time_embedding = TimeEmbedding(t, config.diffusion_steps)
        self.schedule = CosineSchedule(config.diffusion_steps, config.cosine_s)
        # Latent population mean/std: real parameters, trained and saved (METHOD.md defect 2).
        # The diffusion runs on the latent standardised by them.
        # With latent_standardization "running" they are buffers: running statistics of the
        # encoder means, updated in training, never pulled by a loss; with "pca" the latent is
        # whitened by its principal components (``set_latent_basis``; docs/science.md).
        if config.latent_standardization == "learned":
            self.latent_mean = nn.Parameter(torch.zeros(c))
            self.latent_std = nn.Parameter(torch.ones(c))
        else:
            self.register_buffer("latent_mean", torch.zeros(c))
            self.register_buffer("latent_std", torch.ones(c))
        size = c * latent.nlat * latent.nlon
        k = min(config.latent_eofs, size) if config.latent_standardization == "pca" else 0
        self.register_buffer("latent_center", torch.zeros(c, *latent.shape))
        self.register_buffer("latent_eofs", torch.zeros(k, size))
        self.register_buffer("latent_eof_scale", torch.ones(k))
        self.register_buffer("latent_residual_scale", torch.ones(()))
        # latent_scales monthly: each calendar month's factor on those scales (the residual's last)
        self.register_buffer("latent_month_factor", torch.ones(12, k + 1))
        # Fixed spectral resampling of conditioning maps to the latent grid.
        self.to_latent_sht = TruncatedSHT(full, latent.lmax)
        self.to_latent_isht = TruncatedISHT(latent, latent.lmax)
        self.register_buffer("latent_area_weights", torch.as_tensor(latent.area_weights, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("statics", torch.zeros(self.n_static, *full.shape))
        self.register_buffer("statics_latent", torch.zeros(self.n_static, *latent.shape))
        self.register_buffer("area_weights", torch.as_tensor(full.area_weights, dtype=torch.float32),
                             persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def forcing_channels(self) -> int:
        """The forcing maps: sst, siconc, sst_undefined [, the global-mean SST anomaly]."""
        return self.n_forcing + int(self.config.global_sst == "input")

    @property
    def cond_channels(self) -> int:
        return self.forcing_channels + self.config.seasonal_channels + self.n_static

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, *self.latent_grid.shape)

    def set_statics(self, statics: torch.Tensor) -> None:
        """Store the normalised statics (5, H, W): they travel with the weights in checkpoints."""
        if tuple(statics.shape) != tuple(self.statics.shape):
            raise ValueError(f"statics have shape {tuple(statics.shape)}; expected {tuple(self.statics.shape)}")
        with torch.no_grad():
            self.statics.copy_(statics)
            self.statics_latent.copy_(self.resample_to_latent(self.statics[None])[0])

    def resample_to_latent(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) on the model grid -> (B, K, h, w), truncated to the latent grid's modes."""
        coeffs = self.to_latent_sht(maps)[..., : self.latent_grid.lmax, :]
        return self.to_latent_isht(coeffs)

    # ------------------------------------------------------------------ the API
    def conditioning(self, forcing: torch.Tensor, month: torch.Tensor) -> Conditioning:
        """Conditioning of a month from its forcing (B, 3, H, W) and month of year (B,) in 1..12.

        Compute it once per month and pass it to many members (it broadcasts from batch 1).
        """
        if forcing.dim() != 4 or forcing.shape[1] != self.n_forcing:
            raise ValueError(f"forcing has shape {tuple(forcing.shape)}; expected (B, {self.n_forcing}, H, W)")
        month = torch.as_tensor(month, device=forcing.device).reshape(-1)
        if month.shape[0] != forcing.shape[0]:
            raise ValueError(f"{month.shape[0]} months for {forcing.shape[0]} forcing samples; expected one each")
        batch = forcing.shape[0]
        g = self.global_sst_map(forcing)
        season = self.seasonality(month).to(forcing.dtype)
        response = None
        if self.linear_forcing is not None:
            gain_maps = (torch.cat([season, forcing[:, 1:2]], dim=1)
                         if self.config.linear_forcing_gains == "seasonal" else None)
            response = self.linear_forcing(torch.cat([forcing[:, :2], g], dim=1), self.statics.to(forcing.dtype),
                                           gain_maps)
        if self.config.global_sst == "input":
            forcing = torch.cat([forcing, g], dim=1)
        elif self.config.global_sst == "linear":  # the networks see the pattern: SST minus G over ocean
            ocean = 1 - forcing[:, 2:3]
            forcing = torch.cat([forcing[:, :1] - g * ocean, forcing[:, 1:]], dim=1)
        statics = self.statics.to(forcing.dtype).expand(batch, -1, -1, -1)
        full = torch.cat([forcing, season, statics], dim=1)
        latent = torch.cat([self.resample_to_latent(torch.cat([forcing, season], dim=1)),
                            self.statics_latent.to(forcing.dtype).expand(batch, -1, -1, -1)], dim=1)
        return Conditioning(full, latent, response, month)

    def global_sst_map(self, forcing: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): the area-weighted mean of the SST map over ocean (in the forcing's
        normalised units: with the anomaly normalisation, the global-mean SST anomaly)."""
        w = self.area_weights.to(forcing.dtype) * (1 - forcing[:, 2])
        g = (forcing[:, 0] * w).sum(dim=(-2, -1)) / w.sum(dim=(-2, -1)).clamp_min(1e-12)
        return g[:, None, None, None].expand(-1, 1, *forcing.shape[-2:])

    def encode(self, state: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """State (B, 37, H, W) of month t with month t's conditioning -> (mu, logvar) (B, C, h, w)."""
        cond = cond.broadcast(state.shape[0])
        if cond.response is not None:  # the CVAE sees what the linear forcing response leaves
            state = state - cond.response.to(state.dtype)
        mu, logvar = self.encoder(state, cond.full, cond.latent).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, latent: torch.Tensor, cond: Conditioning | PreparedMonth) -> torch.Tensor:
        """Latent (B, C, h, w) of a month with *that month's* conditioning -> state (B, 37, H, W)."""
        month = cond if isinstance(cond, PreparedMonth) else None
        cond = month.cond if month else cond
        context = month.decoder if month else self.decoder.context(cond.latent.to(latent.dtype), cond.full)
        chunk = DECODE_CHUNK_CPU if latent.device.type == "cpu" else MEMBER_CHUNK
        state = torch.cat([self.decoder.run(part, context) for part in self._chunks(latent, cond.batch, chunk)])
        return state if cond.response is None else state + cond.response.to(state.dtype)

    def run_constants(self, dtype: torch.dtype = torch.float32) -> RunConstants:
        """The parts of ``prepare_month`` that depend on the weights alone (valid until they change)."""
        steps = torch.arange(1, self.config.diffusion_steps + 1, device=self.latent_center.device)
        time = self.time_maps(steps).to(dtype)  # (T, t, h, w)
        ops = self.denoiser.spectral.operators()
        time_spectra = self.denoiser.spectrum(time, ops, first=2 * self.config.latent_channels)
        return RunConstants(ops, self.decoder.spectral.operators(), time, time_spectra)

    def prepare_month(self, cond: Conditioning, constants: RunConstants | None = None) -> PreparedMonth:
        """What ``sample_next`` and ``decode`` reuse for every member and diffusion step of the
        month of ``cond`` (compute it once per month, at batch 1 for a rollout). ``constants``:
        a previous month's ``constants`` (the same weights), to skip recomputing them."""
        fixed = self.run_constants(cond.latent.dtype) if constants is None else constants
        den = self.denoiser.context(cond.latent, None, fixed.denoiser_ops)  # modulations: per step below
        contexts = {}
        for i in range(self.config.diffusion_steps):
            step_time = fixed.time[i: i + 1].expand(cond.batch, -1, -1, -1)
            modulations = self.denoiser.modulations(torch.cat([cond.latent, step_time], dim=1))
            contexts[i + 1] = den.with_modulations(modulations, add=fixed.time_spectra[:, :, i: i + 1])
        decoder = self.decoder.context(cond.latent, cond.full, fixed.decoder_ops)
        return PreparedMonth(cond, decoder, contexts, fixed)

    def sample_next(self, latent: torch.Tensor, cond_next: Conditioning | PreparedMonth,
                    generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        """Sample month t + 1's latent given month t's latent and month **t + 1**'s conditioning
        (or its ``prepare_month``).

        ``generator``: one ``torch.Generator`` per member (a list of length B), so member k's
        noise does not depend on the batch it runs in; a single generator serves the batch.
        """
        month = cond_next if isinstance(cond_next, PreparedMonth) else self.prepare_month(cond_next)
        if isinstance(generator, torch.Generator):  # one generator for the batch: one chunk
            return self._sample_chunk(latent, month, generator)
        parts = self._chunks(latent, month.batch)
        starts = [0, *torch.tensor([p.shape[0] for p in parts]).cumsum(0).tolist()]
        return torch.cat([self._sample_chunk(part, month, generator[start: start + part.shape[0]])
                          for start, part in zip(starts, parts, strict=False)])

    def _sample_chunk(self, latent: torch.Tensor, month: PreparedMonth, generators) -> torch.Tensor:
        c = self.config.latent_channels
        target_month = month.cond.month
        prior_month = None if target_month is None else (target_month - 2) % 12 + 1  # month t
        # the prior latent's image: once per month and member, not per diffusion step
        prior = self.denoiser.spectrum(self.standardise(latent, prior_month), month.steps[1].ops, first=c)

        def predict(x_t, t):
            return self.denoiser.run(x_t, month.steps[int(t[0])], add=prior)

        x0 = ancestral_sample(self.schedule, predict, tuple(latent.shape), generators, latent.device,
                              self.config.sampler_variance)
        return self.unstandardise(x0, target_month)

    def compile_block_tails(self) -> None:
        """torch.compile the real-valued tails of the denoiser and decoder (rollout.compile, GPU)."""
        for block in (self.denoiser, self.decoder):
            block.tail = torch.compile(block.tail, dynamic=False)

    @staticmethod
    def _chunks(members: torch.Tensor, context_batch: int, size: int = MEMBER_CHUNK) -> list[torch.Tensor]:
        """Members in chunks of ``size`` when the context broadcasts (batch 1)."""
        return list(members.split(size)) if context_batch == 1 else [members]

    # ------------------------------------------------------------------ pieces
    def standardise(self, latent: torch.Tensor, month: torch.Tensor | None = None) -> torch.Tensor:
        """The latent (B, C, h, w) of months ``month`` (B,) or (1,) in 1..12 as the diffusion
        sees it: per-channel standardised, or PCA-whitened (with latent_scales monthly, by
        that calendar month's scales; ``month`` None: the pooled ones)."""
        if self.config.latent_standardization == "pca":
            eof_scale, residual_scale = self._whitening_scales(month)
            x = (latent - self.latent_center).flatten(1)
            coeffs = x @ self.latent_eofs.T  # (B, K)
            inside = (coeffs / eof_scale) @ self.latent_eofs
            return (inside + (x - coeffs @ self.latent_eofs) / residual_scale).view_as(latent)
        return (latent - self.latent_mean.view(1, -1, 1, 1)) / self._latent_std().view(1, -1, 1, 1)

    def unstandardise(self, x: torch.Tensor, month: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.latent_standardization == "pca":
            eof_scale, residual_scale = self._whitening_scales(month)
            y = x.flatten(1)
            coeffs = y @ self.latent_eofs.T
            inside = (coeffs * eof_scale) @ self.latent_eofs
            return (inside + (y - coeffs @ self.latent_eofs) * residual_scale).view_as(x) + self.latent_center
        return x * self._latent_std().view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    def _whitening_scales(self, month: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The principal directions' scales (K,) or (B, K) and the residual's () or (B, 1)."""
        if month is None or self.config.latent_scales == "pooled":
            return self.latent_eof_scale, self.latent_residual_scale
        factor = self.latent_month_factor[torch.as_tensor(month, device=self.latent_month_factor.device)
                                          .reshape(-1).long() - 1]  # (B, K + 1)
        return self.latent_eof_scale * factor[:, :-1], self.latent_residual_scale * factor[:, -1:]

    def _latent_std(self) -> torch.Tensor:
        return self.latent_std.abs() + 1e-3

    @torch.no_grad()
    def set_latent_basis(self, latents: torch.Tensor, months: torch.Tensor | None = None) -> None:
        """PCA whitening from encoder means (N, C, h, w) of the training months: the mean, the
        leading principal directions and their standard deviations, and one standard
        deviation for everything else (symmetric whitening: the whitened latent keeps the
        latent's geography, so the denoiser's spatial structure still applies).

        ``months`` (N,) in 1..12: also each calendar month's factor on those scales (the
        months within one calendar month of it, about the same centre)."""
        n = latents.shape[0]
        center = latents.mean(dim=0)
        x = (latents - center).flatten(1).double()
        _, s, vt = torch.linalg.svd(x, full_matrices=False)
        variance = s.square() / n
        floor = 1e-6 * float(variance[0]) if variance.numel() else 1e-12
        # directions with (numerically) no variance go with the rest, under one floored scale
        k = min(self.latent_eofs.shape[0], int((variance > floor).sum()))
        residual = (variance[k:].sum() / max(x.shape[1] - k, 1)).clamp_min(max(floor, 1e-12))
        if self.config.latent_residual == "held_out" and n >= 4:
            residual = held_out_residual(x, k).clamp_min(max(floor, 1e-12))
        self.latent_center.copy_(center)
        self.latent_eofs.zero_()
        self.latent_eofs[:k] = vt[:k].float()
        self.latent_eof_scale.fill_(1.0)
        self.latent_eof_scale[:k] = variance[:k].clamp_min(1e-12).sqrt().float()
        self.latent_residual_scale.fill_(float(residual.sqrt()))
        self.latent_month_factor.fill_(1.0)
        if months is not None:  # the kept directions' factors and the residual's (last column)
            factors = monthly_factors(x, vt[:k], torch.as_tensor(months).reshape(-1)).float()
            self.latent_month_factor[:, :k] = factors[:, :k]
            self.latent_month_factor[:, -1] = factors[:, -1]

    @torch.no_grad()
    def track_latent_statistics(self, mu: torch.Tensor, momentum: float) -> None:
        """Move the running latent mean/std towards the batch's area-weighted channel
        statistics of the encoder means (latent_standardization: running)."""
        if self.config.latent_standardization != "running":
            return
        moments = torch.stack([self.area_mean(mu).mean(dim=0), self.area_mean(mu.square()).mean(dim=0)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the statistics of the global batch, so that DDP equals one process on it
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, var = moments[0], (moments[1] - moments[0].square()).clamp_min(0)
        self.latent_mean.lerp_(mean.float(), momentum)
        self.latent_std.lerp_(var.sqrt().float(), momentum)

    def leading_pc_error(self, error: torch.Tensor) -> torch.Tensor:
        """Mean square (B,) of a whitened-latent error (B, C, h, w) along the whitening's
        principal directions (latent_standardization pca; zeros otherwise).

        The diffusion loss averages over all C*h*w directions, so the few that carry the
        large-scale variability weigh almost nothing in it (128 of 4608 at 37x72): a denoiser
        trained on it alone predicts x0 along them worse than x0 = sqrt(abar) x_t would, and
        its samples carry 2-4x their variance (docs/science.md, "The circulation's excess
        variance"). This term gives those directions their own weight."""
        if self.latent_eofs.shape[0] == 0:
            return error.new_zeros(error.shape[0])
        return (error.flatten(1).float() @ self.latent_eofs.T).square().mean(dim=1)

    def time_maps(self, t: torch.Tensor) -> torch.Tensor:
        """The diffusion-time embedding of steps ``t`` (B,) as constant maps (B, T, h, w)."""
        return self.time_embedding(t)[:, :, None, None].expand(-1, -1, *self.latent_grid.shape)

    def predict_v(self, x_t: torch.Tensor, t: torch.Tensor, prior: torch.Tensor,
                  cond_latent: torch.Tensor) -> torch.Tensor:
        """Denoiser: v from the noisy standardised latent, step t, the standardised prior latent
        and the target month's latent conditioning maps."""
        time = self.time_maps(t).to(x_t.dtype)
        return self.denoiser(torch.cat([x_t, prior, time], dim=1), cond_latent,
                             torch.cat([cond_latent, time], dim=1))

    def area_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Area-weighted mean over the latent grid: (..., h, w) -> (...)."""
        return (x * self.latent_area_weights.to(x.dtype)).sum(dim=(-2, -1))

    # ------------------------------------------------------------------ training objective
    # set by mdiff.train from the train config (not part of the architecture)
    grad_to_encoder: bool = True
    reconstruct_both: bool = True
    latent_momentum: float = 0.01

    def forward(self, batch: dict[str, torch.Tensor], noise: TrainingNoise,
                state_weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample loss terms (B,) of the joint objective; see ``training_losses``."""
        return training_losses(self, batch, noise, state_weights, self.grad_to_encoder, self.reconstruct_both)


@dataclass
class TrainingNoise:
    """All randomness of one training step, drawn per sample (see ``mdiff.train``), so an
    update does not depend on how a batch is split over processes."""

    eps: torch.Tensor  # (B, C, h, w) reparametrisation noise of month t
    eps_next: torch.Tensor  # (B, C, h, w) ... of month t + 1
    step: torch.Tensor  # (B,) diffusion step in 1..T
    eps_diffusion: torch.Tensor  # (B, C, h, w) diffusion noise

    def to(self, device) -> TrainingNoise:
        return TrainingNoise(self.eps.to(device), self.eps_next.to(device), self.step.to(device),
                             self.eps_diffusion.to(device))


def draw_training_noise(model: MonthlyDiffusion, generators: Sequence[torch.Generator]) -> TrainingNoise:
    """One sample's worth of training noise per generator."""
    shape = model.latent_shape
    eps, eps_next, steps, eps_diff = [], [], [], []
    for g in generators:
        eps.append(torch.randn(shape, generator=g))
        eps_next.append(torch.randn(shape, generator=g))
        steps.append(torch.randint(1, model.config.diffusion_steps + 1, (), generator=g))
        eps_diff.append(torch.randn(shape, generator=g))
    return TrainingNoise(torch.stack(eps), torch.stack(eps_next), torch.stack(steps), torch.stack(eps_diff))


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, area_weights: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE (B,): mean over channels of the area-weighted mean over the sphere."""
    return ((pred - target).square().mean(dim=1) * area_weights).sum(dim=(-2, -1))


def latent_stats_loss(model: MonthlyDiffusion, mu: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) pull of the latent population mean/std parameters towards each sample's
    area-weighted channel mean/std, and of those parameters towards 0 and 1. Per sample (not
    per batch) so that the loss of a batch is the mean over its samples, whatever its split."""
    mean = model.area_mean(mu)  # (B, C)
    std = (model.area_mean((mu - mean[..., None, None]).square()) + 1e-6).sqrt()
    track = (mean - model.latent_mean).square() + (std - model.latent_std).square()
    anchor = model.latent_mean.square() + (model.latent_std - 1).square()
    return (track + anchor).mean(dim=1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor, model: MonthlyDiffusion) -> torch.Tensor:
    """Per-sample KL(N(mu, sigma^2) || N(0, 1)) per latent number, area-weighted: (B,)."""
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar)
    return model.area_mean(kl).mean(dim=1)


def training_losses(model: MonthlyDiffusion, batch: dict[str, torch.Tensor], noise: TrainingNoise,
                    state_weights: torch.Tensor, grad_to_encoder: bool = True,
                    reconstruct_both: bool = True) -> dict[str, torch.Tensor]:
    """The joint objective, per sample (B,): reconstruction (area-weighted with
    ``state_weights``), v-prediction, KL and latent population terms.

    The denoiser is conditioned on a *sampled* prior latent z_t = mu_t + sigma_t eps and on
    month t + 1's conditioning, and targets mu_{t+1} (stochastic prior-state conditioning).
    ``reconstruct_both=False`` decodes month t + 1 only: every month is the t + 1 of one pair,
    so an epoch still reconstructs each month once, at half the decoder's cost.
    """
    b = batch["state"].shape[0]
    cond = model.conditioning(batch["forcing"], batch["month"])
    cond_next = model.conditioning(batch["forcing_next"], batch["month_next"])
    # months t and t + 1 go through the CVAE together, each with its own conditioning
    both = Conditioning.cat([cond, cond_next])
    states = torch.cat([batch["state"], batch["state_next"]])
    regression = torch.zeros_like(states[:b, 0, 0, 0])
    if both.response is not None:
        # the linear forcing path is fitted by its own least-squares loss; the CVAE models
        # what it leaves (its response enters the CVAE detached, so the two do not trade)
        regression = pair_mean_of(weighted_mse(both.response, states, state_weights), b)
        both = both.detached()
    mu, logvar = model.encode(states, both)
    z = mu + (0.5 * logvar).exp() * torch.cat([noise.eps, noise.eps_next])
    if reconstruct_both:
        recon = pair_mean_of(weighted_mse(model.decode(z, both), states, state_weights), b)
    else:
        recon = weighted_mse(model.decode(z[b:], cond_next.detached()), states[b:], state_weights)

    if model.training and model.config.latent_standardization == "running":
        model.track_latent_statistics(mu, model.latent_momentum)
    diffusion_prior, diffusion_target = (z[:b], mu[b:]) if grad_to_encoder else (z[:b].detach(), mu[b:].detach())
    prior = model.standardise(diffusion_prior, batch["month"])
    target = model.standardise(diffusion_target, batch["month_next"])
    x_t = add_noise(model.schedule, target, noise.eps_diffusion, noise.step)
    v = model.predict_v(x_t, noise.step, prior, cond_next.latent)
    v_error = v - v_target(model.schedule, target, noise.eps_diffusion, noise.step)
    diffusion = model.area_mean(v_error.square())

    def pair_mean(x):
        return pair_mean_of(x, b)

    return {
        "reconstruction": recon,
        "forcing_regression": regression,
        "diffusion": diffusion.mean(dim=1),
        "leading_pcs": model.leading_pc_error(v_error),
        "kl": pair_mean(kl_to_standard_normal(mu, logvar, model)),
        "latent_stats": (pair_mean(latent_stats_loss(model, mu)) if isinstance(model.latent_mean, nn.Parameter)
                         else torch.zeros_like(recon)),
    }


def pair_mean_of(x: torch.Tensor, b: int) -> torch.Tensor:
    """(2B,) -> (B,): the average of months t and t + 1 of each sample."""
    return 0.5 * (x[:b] + x[b:])


def monthly_factors(x: torch.Tensor, eofs: torch.Tensor, months: torch.Tensor) -> torch.Tensor:
    """(12, K + 1): per calendar month, the rms of centred latents ``x`` (N, D) along each of the
    ``eofs`` (K, D) and of what they leave, over the months within one calendar month of it,
    divided by the same rms over all months. A month with no samples nearby keeps 1."""
    coeffs = x @ eofs.T  # (N, K)
    residual = (x - coeffs @ eofs).square().mean(dim=1, keepdim=True)  # (N, 1)
    power = torch.cat([coeffs.square(), residual], dim=1)
    pooled = power.mean(dim=0).clamp_min(1e-30)
    out = torch.ones(12, power.shape[1], dtype=power.dtype, device=power.device)
    months = months.to(power.device)
    for m in range(1, 13):
        near = ((months - m) % 12 <= 1) | ((m - months) % 12 <= 1)
        if bool(near.any()):
            out[m - 1] = (power[near].mean(dim=0) / pooled).clamp_min(1e-6).sqrt()
    return out


def held_out_residual(x: torch.Tensor, k: int) -> torch.Tensor:
    """Variance per direction that ``k`` principal components leave in latents they were not
    fitted to: fitted to the even rows of the centred (N, D) ``x``, measured on the odd rows,
    and the other way round, averaged."""
    halves = (x[0::2], x[1::2])
    estimates = []
    for fit, test in (halves, halves[::-1]):
        _, _, vt = torch.linalg.svd(fit - fit.mean(dim=0), full_matrices=False)
        basis = vt[: min(k, vt.shape[0])]
        rest = test - (test @ basis.T) @ basis
        estimates.append(rest.square().sum() / (test.shape[0] * max(x.shape[1] - basis.shape[0], 1)))
    return torch.stack(estimates).mean()


def build_model(config: ModelConfig, grid: LatLonGrid, n_state: int | None = None, n_forcing: int | None = None,
                n_static: int | None = None) -> MonthlyDiffusion:
    """The model for ``grid``; channel counts per role default to the variable table's."""
    return MonthlyDiffusion(config, grid, n_state, n_forcing, n_static)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters, complex weights (stored as real pairs) counted once."""
    from mdiff.nn.spectral import SpectralConv

    complex_ids = {id(p) for m in model.modules() if isinstance(m, SpectralConv) for p in m.parameters()}
    return sum(p.numel() // 2 if id(p) in complex_ids else p.numel() for p in model.parameters())
