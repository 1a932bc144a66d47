"""Typed, validated configuration. Unknown keys are errors that name the key and the file.

One dataclass per section of ``config/config.yaml`` (the workflow config) and of the
model files ``config/model/*.yaml`` (architecture + optimisation). The JSON schema that
the Snakefile validates against is generated from these classes (``mdiff config-schema``)
and a test keeps the committed copy in step, so there is one source of truth.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dacite
import yaml

from mdiff import protocol
from mdiff.variables import ERA5_GROUPS


class ConfigError(ValueError):
    pass


def _check_month(value: str, where: str) -> str:
    try:
        protocol.parse_month(value)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return value


def _require(ok: bool, message: str) -> None:
    """A config check: raise ``message`` (what is wrong, what was expected) unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def _check_period(period: list[str], where: str) -> None:
    _require(len(period) == 2, f"{where}: expected [first month, last month], got {period!r}")
    a, b = (_check_month(p, where) for p in period)
    _require(a <= b, f"{where}: first month {a} is after last month {b}")


@dataclass
class GridConfig:
    """Model grid: equiangular with both poles, nlon = 2 (nlat - 1)."""

    nlat: int = 121
    nlon: int = 240

    def __post_init__(self) -> None:
        _require(self.nlat >= 3 and self.nlon == 2 * (self.nlat - 1),
                 f"grid: nlat={self.nlat}, nlon={self.nlon}; expected nlon = 2*(nlat-1)")


@dataclass
class PeriodsConfig:
    """Months are 'YYYY-MM'; periods are inclusive [first, last]."""

    run_start: str = protocol.RUN[0]  # initial condition of the rollouts (and first prepared month)
    run_end: str = protocol.RUN[1]  # last month of the rollouts
    stats: list[str] = field(default_factory=lambda: [protocol.ANALYSIS[0], protocol.TRAINING_LIMIT])
    train: list[str] = field(default_factory=lambda: ["1985-01", protocol.TRAINING_LIMIT])
    validate: list[str] = field(default_factory=lambda: [protocol.ANALYSIS[0], "1984-12"])

    def __post_init__(self) -> None:
        # Order and containment of every period, here, when the config loads: a bad period
        # must not surface later as a strange error of another stage (or not at all).
        _check_month(self.run_start, "periods.run_start")
        _check_month(self.run_end, "periods.run_end")
        _require(self.run_start <= self.run_end,
                 f"periods.run_end {self.run_end} is before periods.run_start {self.run_start}; "
                 "expected run_start <= run_end (the prepared and rolled-out months)")
        for name in ("stats", "train", "validate"):
            period = getattr(self, name)
            _check_period(period, f"periods.{name}")
            _require(period[1] <= protocol.TRAINING_LIMIT,
                     f"periods.{name} ends {period[1]}: AI-MIP allows training, statistics and "
                     f"model selection on 1979-2014 only (last month {protocol.TRAINING_LIMIT})")
            _require(self.run_start <= period[0] and period[1] <= self.run_end,
                     f"periods.{name} {period[0]}..{period[1]} is not inside the prepared months "
                     f"periods.run_start..run_end {self.run_start}..{self.run_end}; expected "
                     f"{self.run_start} <= first <= last <= {self.run_end}")


@dataclass
class SyntheticConfig:
    """The embedded synthetic ERA5-like world (source: synthetic)."""

    seed: int = 0
    realizations: int = 3  # independent truth realisations under the same forcing (>= 1)
    sst_offset: float = 0.0  # uniform SST offset over ocean, K (the world's own +dK runs)

    def __post_init__(self) -> None:
        _require(self.realizations >= 1, "synthetic.realizations must be >= 1")


@dataclass
class Era5Config:
    """Real ERA5 and the AI-MIP forcing (source: era5). See docs/real-data.md.

    CDS credentials come from the user's standard client config (~/.cdsapirc, or
    CDSAPI_URL/CDSAPI_KEY), never from this file.
    """

    source: Literal["cds", "local"] = "cds"
    raw_dir: str = "data/era5/raw"  # downloads (cds) and check records (local) live here
    # source: local -- glob pattern per group (pressure, pressure_500, single with {year};
    # invariant without), e.g. "/pool/era5/monthly/{year}/*_pl.nc"
    local_patterns: dict[str, str] = field(default_factory=dict)
    max_retries: int = 5  # per CDS request / download, with exponential backoff
    retry_backoff_s: float = 30.0  # first wait; doubles at each retry
    forcing_url: str = ("https://zenodo.org/api/records/17065758/files/"
                        "ERA5-0.25deg-monthly-mean-forcing-1978-2024.nc/content")
    forcing_file: str = "ERA5-0.25deg-monthly-mean-forcing-1978-2024.nc"  # name under raw_dir/aimip
    forcing_sha256: str = ""  # pin the AI-MIP file ("" = only record the checksum on first fetch)

    def __post_init__(self) -> None:
        _require(self.max_retries >= 0 and self.retry_backoff_s >= 0,
                 "era5.max_retries and era5.retry_backoff_s must be >= 0")
        bad = [k for k in self.local_patterns if k not in ERA5_GROUPS]  # groups of the variable table
        _require(not bad, f"era5.local_patterns: unknown group(s) {bad}; expected {list(ERA5_GROUPS)}")
        _require(len(self.forcing_sha256) in (0, 64), "era5.forcing_sha256: expected 64 hex digits (or empty)")


@dataclass
class RolloutConfig:
    """Ensemble rollouts (mdiff rollout): run_start..run_end of periods, per experiment and
    member batch (consecutive blocks of member_batch members, 1-based)."""

    experiments: list[str] = field(default_factory=lambda: list(protocol.EXPERIMENTS))
    members: int = 5
    member_batch: int = 5  # members stepped together in one job
    seed: int = 20250101  # base seed; member k uses a generator seeded from (seed, k)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False  # bf16 autocast of the real matmuls (spectral transforms stay fp32); fast on GPUs
    compile: bool = False  # torch.compile the denoiser/decoder on GPU
    resume_every: int = 12  # months between resume states ({output}.resume.pt)

    def __post_init__(self) -> None:
        bad = [e for e in self.experiments if e not in protocol.EXPERIMENTS]
        _require(not bad, f"rollout.experiments: unknown {bad}; expected some of {list(protocol.EXPERIMENTS)}")
        _require(self.members >= 1 and self.member_batch >= 1, "rollout.members and rollout.member_batch must be >= 1")
        _require(self.resume_every >= 1, "rollout.resume_every must be >= 1 (months between resume states)")
        _require(0 <= self.seed < 2**63, f"rollout.seed = {self.seed}; expected 0 <= seed < 2**63")


@dataclass
class AimipConfig:
    """Identity and layout of the AI-MIP files."""

    institution_id: str = "mdiff"
    institution: str = "mdiff developers"
    source_id: str = "mdiff-MD15"
    source: str = "mdiff MD-1.5: monthly latent diffusion emulator (SFNO CVAE + latent DDPM)"
    contact: str = "mdiff developers"
    version: str = "v20260101"  # version folder: fixed so outputs are predictable
    # aimip: <institution>/<source>/<experiment>/<member>/Amon/<var>/<grid>/<version>/
    # cmip6: CMIP6/AIMIP/<institution>/<source>/<experiment>/<member>/Amon/<var>/<grid>/<version>/
    layout: Literal["aimip", "cmip6"] = "aimip"
    # gn: the model's native grid (required); gr: also a 1-degree tree regridded from it
    grids: list[Literal["gn", "gr"]] = field(default_factory=lambda: ["gn"])
    deflate_level: int = 1  # NetCDF deflate level of the CMOR files (0 = none)
    block_months: int = 60  # months per cmor.write call (bounds the memory of one job)

    def __post_init__(self) -> None:
        for key in ("institution_id", "source_id"):
            value = getattr(self, key)
            _require(bool(value) and not {"_", "/", " "} & set(value),
                     f"aimip.{key} {value!r}: letters, digits and dashes only "
                     "(no underscores, slashes or spaces: it is part of file names)")
        _require(len(self.version) == 9 and self.version.startswith("v") and self.version[1:].isdigit(),
                 f"aimip.version {self.version!r}: expected vYYYYMMDD")
        _require("gn" in self.grids and len(set(self.grids)) == len(self.grids),
                 f"aimip.grids {self.grids}: expected [gn] or [gn, gr] (the native grid is required; gr is "
                 "regridded from it)")
        _require(0 <= self.deflate_level <= 9 and self.block_months >= 1,
                 "aimip.deflate_level must be 0..9 and aimip.block_months >= 1")


@dataclass
class EvaluateConfig:
    """The evaluation report (AIMIP.md, evaluation): channels, periods and regions."""

    # The whole analysis period (spin-up excluded): climatologies, modes, responses.
    analysis: list[str] = field(default_factory=lambda: list(protocol.ANALYSIS))
    # E1 biases and E2 trends, per period (AI-MIP: training era and held-out era).
    periods: list[list[str]] = field(default_factory=lambda: [list(protocol.TRAINING_ERA), list(protocol.HELD_OUT)])
    variables: list[str] = field(default_factory=lambda: ["tas", "pr", "psl", "ta850", "z500", "ua250"])
    # E3: channels regressed on the Nino3.4 index.
    enso_variables: list[str] = field(default_factory=lambda: ["tas", "pr", "z500"])
    # E5: channels of the SST response (AIMIP.md: tas, ts, pr, huss, zg500, ta850, ta500).
    response_variables: list[str] = field(
        default_factory=lambda: ["tas", "ts", "pr", "tdas", "z500", "ta850", "ta500"])
    max_abs_lat: float = 87.5  # E1 RMS over |lat| <= this (as the AI-MIP evaluators do)

    def __post_init__(self) -> None:
        # Channel names are checked by `mdiff evaluate`.
        _check_period(self.analysis, "evaluate.analysis")
        _require(bool(self.periods), "evaluate.periods: expected at least one [first, last] period")
        for i, period in enumerate(self.periods):
            _check_period(period, f"evaluate.periods[{i}]")
            _require(self.analysis[0] <= period[0] and period[1] <= self.analysis[1],
                     f"evaluate.periods[{i}] {period} lies outside evaluate.analysis {self.analysis}")
        _require(0 < self.max_abs_lat <= 90, f"evaluate.max_abs_lat = {self.max_abs_lat}; expected (0, 90]")


@dataclass
class SubmitConfig:
    """Upload of the validated tree (credentials only from the environment / AWS config)."""

    endpoint_url: str = "https://s3.eu-dkrz-1.dkrz.cloud"
    bucket: str = "ai-mip"
    # Folder in the bucket the tree goes under. "": the bucket root for layout aimip (the
    # tree's top folder is already the institution_id), the institution_id for layout cmip6.
    prefix: str = ""
    chunksize_mb: int = 50  # multipart chunk size; ETag checks assume the same value
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 2  # per request (botocore) and per operation (s3fs)

    def __post_init__(self) -> None:
        _require(self.chunksize_mb >= 5, "submit.chunksize_mb must be >= 5 (the S3 minimum part size)")
        _require(bool(self.bucket) and "/" not in self.bucket,
                 f"submit.bucket {self.bucket!r}: expected a bucket name without '/'")
        _require(self.max_attempts >= 1, "submit.max_attempts must be >= 1")


@dataclass
class Config:
    """The workflow config (config/config.yaml)."""

    results: str = "results"
    source: Literal["synthetic", "era5"] = "synthetic"
    model: str = "config/model/small.yaml"  # model + optimisation config file
    grid: GridConfig = field(default_factory=GridConfig)
    periods: PeriodsConfig = field(default_factory=PeriodsConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    era5: Era5Config = field(default_factory=Era5Config)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    aimip: AimipConfig = field(default_factory=AimipConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)


@dataclass
class ModelConfig:
    """Architecture of the Monthly Diffusion model (config/model/*.yaml, section model)."""

    latent_channels: int = 32
    squeeze: int = 4  # latent grid = (nlat // squeeze, nlon // squeeze), Gauss-Legendre rows
    seasonal_channels: int = 3  # conditioning maps from the month of year
    seasonal_basis: int = 12  # learned spatial basis maps the month MLP weights
    embed_channels: int = 4  # learned embedding maps concatenated to each block's input
    hidden_channels: int = 80  # width of each block after its spectral convolution (the encoder's)
    # the decoder's / denoiser's widths (None: hidden_channels); they run per member in a rollout,
    # the denoiser 15 times a month and the decoder at full resolution, so they set its speed
    decoder_hidden_channels: int | None = None
    denoiser_hidden_channels: int | None = None
    encoder_rank: int = 64
    decoder_rank: int = 256
    denoiser_rank: int = 128
    mlp_ratio: float = 2.0
    decoder_mlp_ratio: float | None = None  # None: mlp_ratio (the decoder's MLP runs at full resolution)
    time_embed_channels: int = 5
    diffusion_steps: int = 15
    cosine_s: float = 0.008
    lmax: int | None = None  # model-grid truncation; None: the grid's resolvable truncation
    latent_lmax: int | None = None  # latent-grid truncation; None: the latent grid's exact one
    # --- departures from MD v0.9, each measured on/off in docs/science.md
    # anomaly: fields minus their monthly climatology, over the anomaly std; global: MD v0.9's
    # one mean/std per channel
    normalization: Literal["anomaly", "global"] = "anomaly"
    # The global-mean ocean SST anomaly G. linear: the networks see the SST pattern (SST minus
    # G over ocean) and only the linear forcing path sees G, so a uniform warming acts through
    # a linear map (its training-time variance is tiny: no network can learn a nonlinear
    # response to it); input: G as one more conditioning map; none: MD v0.9
    global_sst: Literal["linear", "input", "none"] = "linear"
    # a linear map from the forcing to the decoded state (spectral conv x learned
    # position-dependent gains): the forced response extrapolates linearly to +2K/+4K
    linear_forcing: bool = True
    linear_forcing_channels: int = 8
    linear_forcing_rank: int = 32  # spectral rank of that map (a smooth, large-scale response)
    # static: its gains vary with position only; seasonal: also with the month's seasonality
    # maps and the sea ice (the response over ice follows the ice season; still linear in SST)
    linear_forcing_gains: Literal["static", "seasonal"] = "seasonal"
    # zonal: its spectral map may differ with latitude (a rank-``linear_forcing_rank`` map per
    # order m); isotropic: one convolution kernel everywhere (learned where SST varies, it
    # applies where it never did in training: under the sea ice)
    linear_forcing_kernel: Literal["zonal", "isotropic", "both"] = "zonal"
    # pca: the diffusion runs on the latent whitened by its principal components (recomputed
    # from the encoder means of the training months every epoch): white noise then already has
    # the latent's covariance; running: per-channel running mean/std (buffers); learned:
    # MD v0.9's trained mean/std parameters (the denoising loss shrinks them)
    latent_standardization: Literal["pca", "running", "learned"] = "pca"
    latent_eofs: int = 128  # principal components whitened (the rest shares one scale)
    # the scale shared by the rest: in_sample, the variance the fitted components leave in the
    # months they were fitted to; held_out, the variance components fitted to half the months
    # leave in the other half (what new latents have: in_sample shrinks as latent_eofs nears
    # the number of months)
    latent_residual: Literal["in_sample", "held_out"] = "in_sample"
    # the whitening's standard deviations: pooled, one per direction for the whole year;
    # monthly, one per direction and calendar month (variability is seasonal: the NAO's is
    # ~6x larger in January than in July, which pooled scales ask one denoiser to learn)
    latent_scales: Literal["pooled", "monthly"] = "pooled"
    # beta: ancestral steps with variance beta_t (keeps the variance of the data);
    # posterior: MD v0.9's posterior variance (under-disperses with 15 steps)
    sampler_variance: Literal["beta", "posterior"] = "beta"
    film_embed_channels: int = 0  # learned position maps added to every block's FiLM conditioning

    def __post_init__(self) -> None:
        for name in ("latent_channels", "squeeze", "seasonal_channels", "seasonal_basis",
                     "hidden_channels", "encoder_rank", "decoder_rank", "denoiser_rank",
                     "time_embed_channels", "diffusion_steps"):
            _require(getattr(self, name) >= 1, f"model.{name} = {getattr(self, name)}; expected >= 1")
        _require(self.embed_channels >= 0 and self.mlp_ratio > 0,
                 "model.embed_channels must be >= 0 and model.mlp_ratio > 0")
        for name in ("decoder_hidden_channels", "denoiser_hidden_channels", "latent_lmax"):
            _require(getattr(self, name) is None or getattr(self, name) >= 1,
                     f"model.{name} = {getattr(self, name)}; expected >= 1 or null")
        _require(self.linear_forcing_channels >= 1 and self.linear_forcing_rank >= 1
                 and self.film_embed_channels >= 0 and self.latent_eofs >= 0,
                 "model.linear_forcing_channels and linear_forcing_rank must be >= 1, "
                 "model.film_embed_channels and latent_eofs >= 0")
        _require(self.global_sst != "linear" or self.linear_forcing,
                 "model.global_sst: linear needs model.linear_forcing: true (G reaches the "
                 "state only through the linear forcing path)")
        _require(self.decoder_mlp_ratio is None or self.decoder_mlp_ratio > 0,
                 f"model.decoder_mlp_ratio = {self.decoder_mlp_ratio}; expected > 0 or null")


@dataclass
class LossWeights:
    reconstruction: float = 1.0
    # the linear forcing path's own least-squares fit to the state (model.linear_forcing)
    forcing_regression: float = 1.0
    diffusion: float = 0.5
    # the v error along the whitened latent's principal directions (model.leading_pc_error)
    leading_pcs: float = 0.0
    kl: float = 5e-3
    latent_stats: float = 1e-2


@dataclass
class TrainConfig:
    """Optimisation (config/model/*.yaml, section train)."""

    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    # the linear forcing path's learning rate (None: lr). Its least-squares fit converges
    # slowly at the networks' rate, and its +4K response keeps improving long after its
    # validation loss is flat (docs/science.md)
    linear_forcing_lr: float | None = None
    # epochs of the linear forcing path alone (its least-squares loss, each training month
    # once per epoch) before the joint training: seconds, and the CVAE then starts from what a
    # near-converged linear response leaves
    linear_forcing_prefit_epochs: int = 0
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    sample_every: int = 5  # epochs between full-sampling validation
    device: str = "auto"
    # MD v0.9 lets the denoising loss flow into the encoder (true); it then shrinks its own
    # target (docs/science.md). false: the diffusion sees the encoder's latents detached.
    diffusion_grad_to_encoder: bool = False
    latent_momentum: float = 0.01  # update rate of the running latent statistics
    # both: decode months t and t + 1 of each pair; next: month t + 1 only (each month is the
    # t + 1 of one pair, so an epoch still reconstructs every month once; half the decoding)
    reconstruct: Literal["both", "next"] = "both"
    # last: keep the EMA model of the last epoch; best: MD v0.9's lowest validation
    # reconstruction + denoising loss (with a PCA-whitened latent the basis is refreshed every
    # epoch, so denoising losses of different epochs are not comparable)
    selection: Literal["last", "best"] = "last"


@dataclass
class ModelFile:
    """A model config file: architecture and optimisation together."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- loading


def _unknown_keys(cls, data: Any, prefix: str) -> list[str]:
    """Dotted paths of keys in ``data`` that ``cls`` does not declare."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
        return []
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out = []
    for key, value in data.items():
        if key not in known:
            out.append(f"{prefix}{key}  (expected one of: {', '.join(sorted(known))})")
        else:
            out += _unknown_keys(hints[key], value, f"{prefix}{key}.")
    return out


def from_dict(cls, data: dict | None, source: str = "<dict>"):
    """Build ``cls`` from a mapping, strictly: unknown keys and wrong types are errors."""
    data = data or {}
    unknown = _unknown_keys(cls, data, "")
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s): " + "; ".join(unknown))
    try:
        return dacite.from_dict(cls, data, config=dacite.Config(strict=True))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{source}: {err}") from None


def load(cls, path: str | Path):
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f)
    return from_dict(cls, data, source=str(path))


def load_config(path: str | Path) -> Config:
    return load(Config, path)


def load_model_file(path: str | Path) -> ModelFile:
    return load(ModelFile, path)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def dump_yaml(obj, path: str | Path) -> None:
    """Write the resolved config next to results (atomically)."""
    from mdiff.fileio import atomic_path  # fileio imports nothing of mdiff

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


# ------------------------------------------------------------------------ JSON schema


def _schema_of(tp) -> dict:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {}
        for f in dataclasses.fields(tp):
            props[f.name] = _schema_of(hints[f.name])
            if f.default is not dataclasses.MISSING:
                props[f.name]["default"] = f.default
        out = {"type": "object", "additionalProperties": False, "properties": props}
        doc = (tp.__doc__ or "").strip()
        if doc and not doc.startswith(tp.__name__ + "("):
            out["description"] = doc
        return out
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(a) for a in typing.get_args(tp)]}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _schema_of(item)}
    if origin is dict:
        _, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": _schema_of(value)}
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no schema for {tp!r}")


def config_schema() -> dict:
    schema = _schema_of(Config)
    return {"$schema": "http://json-schema.org/draft-07/schema#",
            "$comment": "generated from mdiff/config.py by `mdiff config-schema`; do not edit",
            **schema}


def schema_yaml() -> str:
    return yaml.safe_dump(json.loads(json.dumps(config_schema())), sort_keys=False)
