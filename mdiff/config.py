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

EXPERIMENTS = ("aimip", "aimip-p2k", "aimip-p4k")
SST_OFFSET_K = {"aimip": 0.0, "aimip-p2k": 2.0, "aimip-p4k": 4.0}
AIMIP_TRAINING_LIMIT = "2014-12"  # AI-MIP: train and select on ERA5 within 1979-2014 only


class ConfigError(ValueError):
    pass


def _check_month(value: str, where: str) -> str:
    try:
        y, m = value.split("-")
        if len(y) != 4 or not 1 <= int(m) <= 12:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a month of the form YYYY-MM") from None
    return value


def _check_period(period: list[str], where: str) -> None:
    if len(period) != 2:
        raise ConfigError(f"{where}: expected [first month, last month], got {period!r}")
    a, b = (_check_month(p, where) for p in period)
    if a > b:
        raise ConfigError(f"{where}: first month {a} is after last month {b}")


@dataclass
class GridConfig:
    """Model grid: equiangular with both poles, nlon = 2 (nlat - 1)."""

    nlat: int = 121
    nlon: int = 240

    def __post_init__(self) -> None:
        if self.nlat < 3 or self.nlon != 2 * (self.nlat - 1):
            raise ConfigError(f"grid: nlat={self.nlat}, nlon={self.nlon}; expected nlon = 2*(nlat-1)")


@dataclass
class PeriodsConfig:
    """Months are 'YYYY-MM'; periods are inclusive [first, last]."""

    run_start: str = "1978-10"  # initial condition of the rollouts (and first prepared month)
    run_end: str = "2024-12"  # last month of the rollouts
    stats: list[str] = field(default_factory=lambda: ["1979-01", "2014-12"])
    train: list[str] = field(default_factory=lambda: ["1985-01", "2014-12"])
    validate: list[str] = field(default_factory=lambda: ["1979-01", "1984-12"])

    def __post_init__(self) -> None:
        _check_month(self.run_start, "periods.run_start")
        _check_month(self.run_end, "periods.run_end")
        for name in ("stats", "train", "validate"):
            period = getattr(self, name)
            _check_period(period, f"periods.{name}")
            if period[1] > AIMIP_TRAINING_LIMIT:
                raise ConfigError(
                    f"periods.{name} ends {period[1]}: AI-MIP allows training, statistics and "
                    f"model selection on 1979-2014 only (last month {AIMIP_TRAINING_LIMIT})"
                )
            if period[0] < self.run_start:
                raise ConfigError(f"periods.{name} starts {period[0]}, before run_start {self.run_start}")


@dataclass
class SyntheticConfig:
    """The embedded synthetic ERA5-like world (source: synthetic)."""

    seed: int = 0
    realizations: int = 3  # independent truth realisations under the same forcing (>= 1)
    sst_offset: float = 0.0  # uniform SST offset over ocean, K (the world's own +dK runs)

    def __post_init__(self) -> None:
        if self.realizations < 1:
            raise ConfigError("synthetic.realizations must be >= 1")


@dataclass
class Era5Config:
    """Real ERA5 and the AI-MIP forcing (source: era5)."""

    source: Literal["cds", "local"] = "cds"
    raw_dir: str = "data/era5/raw"  # where downloaded (or linked) raw files live
    # source: local -- glob patterns with {year} and {group} for a cluster's ERA5 copy
    local_patterns: dict[str, str] = field(default_factory=dict)
    cds_url: str = "https://cds.climate.copernicus.eu/api"
    max_retries: int = 5
    retry_backoff_s: float = 30.0
    forcing_url: str = "https://zenodo.org/records/17065758/files/aimip_sst_sic_1978_2025.nc"
    forcing_sha256: str = ""  # checksum of the AI-MIP forcing file ("" = record it on first fetch)


@dataclass
class RolloutConfig:
    experiments: list[str] = field(default_factory=lambda: list(EXPERIMENTS))
    members: int = 5
    member_batch: int = 5  # members stepped together in one job
    seed: int = 20250101  # base seed; member k uses a generator seeded from (seed, k)
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = False  # bf16 autocast on GPU (SHTs stay fp32)
    compile: bool = False  # torch.compile the denoiser/decoder on GPU

    def __post_init__(self) -> None:
        bad = [e for e in self.experiments if e not in EXPERIMENTS]
        if bad:
            raise ConfigError(f"rollout.experiments: unknown {bad}; expected some of {list(EXPERIMENTS)}")
        if self.members < 1 or self.member_batch < 1:
            raise ConfigError("rollout.members and rollout.member_batch must be >= 1")


@dataclass
class AimipConfig:
    """Identity and layout of the AI-MIP files."""

    institution_id: str = "mdiff"
    institution: str = "mdiff developers"
    source_id: str = "mdiff-MD15"
    source: str = "mdiff MD-1.5: monthly latent diffusion emulator (SFNO CVAE + latent DDPM)"
    contact: str = "mdiff developers"
    version: str = "v20260101"  # version folder: fixed so outputs are predictable
    layout: Literal["aimip", "cmip6"] = "aimip"

    def __post_init__(self) -> None:
        if "_" in self.source_id:
            raise ConfigError(f"aimip.source_id {self.source_id!r}: dashes allowed, underscores not")


@dataclass
class EvaluateConfig:
    periods: list[list[str]] = field(default_factory=lambda: [["1979-01", "2014-12"], ["2015-01", "2024-12"]])
    variables: list[str] = field(default_factory=lambda: ["tas", "pr", "psl", "ta850", "z500", "ua250"])


@dataclass
class SubmitConfig:
    """Upload of the validated tree (credentials only from the environment / AWS config)."""

    endpoint_url: str = "https://s3.eu-dkrz-1.dkrz.cloud"
    bucket: str = "ai-mip"
    prefix: str = ""  # top folder in the bucket; "" = the institution_id
    chunksize_mb: int = 50


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
    squeeze: int = 4  # latent grid = (nlat // squeeze, nlon // squeeze)
    seasonal_channels: int = 3  # learned spatial basis maps weighted by the month MLP
    embed_channels: int = 4  # learned per-channel embedding width
    encoder_rank: int = 64
    decoder_rank: int = 256
    denoiser_rank: int = 128
    mlp_ratio: float = 2.0
    time_embed_channels: int = 5
    diffusion_steps: int = 15
    cosine_s: float = 0.008
    lmax: int | None = None  # None: the grid's resolvable truncation


@dataclass
class LossWeights:
    reconstruction: float = 1.0
    diffusion: float = 0.5
    kl: float = 5e-3
    latent_stats: float = 1e-2


@dataclass
class TrainConfig:
    """Optimisation (config/model/*.yaml, section train)."""

    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    sample_every: int = 5  # epochs between full-sampling validation
    device: str = "auto"


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
        raise ConfigError(f"{source}: unknown config key(s):\n  " + "\n  ".join(unknown))
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
