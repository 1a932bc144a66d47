"""`mdiff fetch-forcing`: the AI-MIP SST/sea-ice forcing file, and resumable HTTP downloads.

The AI-MIP forcing (Zenodo record 17065758) holds *start-of-month* values: each value is
valid at 00 UTC on the first of a month and models are meant to interpolate linearly in
time. The monthly mean of that interpolation is the mean of the two bounding values, which
is what the model is trained on (ERA5 monthly means; METHOD.md, defect 4):
``monthly_means_from_start_of_month`` does that conversion.

``download`` is shared with the CDS path (mdiff.data.era5): a partial file ``X.part`` is
resumed with an HTTP Range request after a cut, retried with exponential backoff, checked
against the expected size and sha256, renamed onto ``X`` and then recorded in a sidecar
``X.json`` (size, sha256, what was asked for). A file whose sidecar matches is never
fetched again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mdiff.config import Era5Config
from mdiff.fileio import sha256_file, write_json

log = logging.getLogger(__name__)

# Read in small blocks: what arrived before a cut is on disk and is not asked for again.
READ_BLOCK = 1 << 14
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(ValueError):
    """A download failed for good (after retries), or its content is not what was expected
    (a ValueError with user_facing set, so `mdiff` prints it as one clear line)."""

    user_facing = True


def sidecar_path(target: str | os.PathLike) -> Path:
    return Path(f"{target}.json")


def is_complete(target: str | os.PathLike, identity: dict) -> bool:
    """True when ``target`` was fully fetched for exactly ``identity`` (url, request, ...).

    Only the size is re-checked (cheap); the sha256 was verified when the file was written.
    """
    target, side = Path(target), sidecar_path(target)
    if not (target.exists() and side.exists()):
        return False
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return record.get("identity") == identity and record.get("size") == target.stat().st_size


def download(url: str, target: str | os.PathLike, *, identity: dict | None = None,
             expected_size: int | None = None, expected_sha256: str = "",
             headers: dict | None = None, max_retries: int = 5, backoff_s: float = 30.0,
             timeout_s: float = 60.0, session=None,
             sleep: Callable[[float], None] = time.sleep) -> dict:
    """Fetch ``url`` to ``target``, resuming ``target.part`` after a cut; returns the record.

    Transient failures (connection errors, cut transfers, HTTP 408/429/5xx) are retried up
    to ``max_retries`` times with backoff ``backoff_s * 2**attempt``; each retry resumes
    from the bytes already on disk (HTTP Range). Credentials in ``headers`` are never logged.
    """
    import requests

    target = Path(target)
    identity = identity or {"url": url}
    if is_complete(target, identity):
        record = json.loads(sidecar_path(target).read_text())
        if not expected_sha256 or record.get("sha256") == expected_sha256.lower():
            log.info("%s: already complete (sidecar matches), not fetched again", target)
            return record
        log.warning("%s: recorded sha256 %s is not the expected %s: fetching again", target,
                    record.get("sha256"), expected_sha256)
        sidecar_path(target).unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{target}.part")
    session = session or requests.Session()
    attempt = 0
    total = expected_size
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have == total:
            break
        if total is not None and have > total:
            log.warning("%s: partial file is larger than expected (%d > %d), starting again", part, have, total)
            part.unlink()
            have = 0
        req_headers = dict(headers or {})
        if have:
            req_headers["Range"] = f"bytes={have}-"
        try:
            with session.get(url, headers=req_headers, stream=True, timeout=timeout_s) as resp:
                if resp.status_code == 416 and have:
                    # the server has nothing past what we hold: the partial file is complete
                    total = have
                    break
                if resp.status_code in RETRY_STATUS:
                    raise _Transient(f"HTTP {resp.status_code}")
                if resp.status_code not in (200, 206):
                    raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}; expected 200 or 206")
                if resp.status_code == 200 and have:
                    log.info("%s: server ignored the Range request, fetching from the start", url)
                    have = 0
                length = resp.headers.get("Content-Length")
                if length is not None:
                    total = have + int(length)
                if expected_size is not None and total is not None and total != expected_size:
                    raise DownloadError(f"{url}: server announces {total} bytes; expected {expected_size}")
                mode = "ab" if have else "wb"
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=target.name, disable=None) as bar:
                    for block in resp.iter_content(READ_BLOCK):
                        f.write(block)
                        bar.update(len(block))
            got = part.stat().st_size
            if total is not None and got < total:
                raise _Transient(f"transfer cut at {got} of {total} bytes")
            total = got
            break
        except (_Transient, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as err:
            attempt += 1
            if attempt > max_retries:
                raise DownloadError(
                    f"{url}: giving up after {max_retries} retries ({err}); the partial file "
                    f"{part} is kept and the next run resumes it"
                ) from err
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("%s: %s; retry %d/%d in %.1f s (resuming at byte %d)", url, err, attempt,
                        max_retries, wait, part.stat().st_size if part.exists() else 0)
            sleep(wait)
    digest = sha256_file(part)
    if expected_sha256 and digest != expected_sha256.lower():
        bad = part.with_suffix(".bad")
        os.replace(part, bad)
        raise DownloadError(f"{url}: sha256 {digest} does not match the expected {expected_sha256} "
                            f"(kept as {bad} for inspection)")
    os.replace(part, target)
    record = {"identity": identity, "size": target.stat().st_size, "sha256": digest,
              "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # Sidecar last: a file without a matching sidecar counts as unfinished.
    write_json(sidecar_path(target), record)
    log.info("%s: complete, %d bytes, sha256 %s", target, record["size"], digest)
    return record


class _Transient(Exception):
    pass


# ------------------------------------------------------------------- forcing semantics


def monthly_means_from_start_of_month(values: np.ndarray, starts: np.ndarray,
                                      months: np.ndarray, source: str = "<forcing>") -> np.ndarray:
    """Monthly means of a field given at month starts: mean of the two bounding values.

    ``values`` (T, ...) at ``starts`` (datetime64, month starts); returns (len(months), ...)
    for ``months`` (datetime64[M]). Needs the start of every month and of the month after
    the last one. NaN where either bounding value is NaN (e.g. SST over land).
    """
    starts_m = np.asarray(starts).astype("datetime64[M]")
    exact = np.asarray(starts).astype("datetime64[s]") == starts_m.astype("datetime64[s]")
    if not exact.all():
        bad = np.asarray(starts)[~exact][0]
        raise ValueError(f"{source}: time {bad} is not 00 UTC on the first of a month; "
                         f"expected start-of-month forcing values")
    index = {m: i for i, m in enumerate(starts_m.tolist())}
    out = np.empty((len(months), *values.shape[1:]), dtype=np.float64)
    for k, m in enumerate(np.asarray(months).astype("datetime64[M]")):
        nxt = m + 1
        missing = [str(t) for t in (m, nxt) if t.tolist() not in index]
        if missing:
            raise ValueError(f"{source}: no start-of-month value for {', '.join(missing)}; the monthly "
                             f"mean of {m} needs the values at its start and at the next month's start "
                             f"(file covers {starts_m[0]}..{starts_m[-1]})")
        out[k] = 0.5 * (values[index[m.tolist()]] + values[index[nxt.tolist()]])
    return out


def fetch_aimip_forcing(era5: Era5Config, output: str | os.PathLike) -> dict:
    """What `mdiff fetch-forcing` does: the AI-MIP file of ``era5.forcing_url``, resumable,
    checked against ``era5.forcing_sha256`` (only recorded when that is empty)."""
    if not era5.forcing_sha256:
        log.warning("era5.forcing_sha256 is empty: the file is not verified, only recorded")
    return download(era5.forcing_url, output, identity={"url": era5.forcing_url}, expected_sha256=era5.forcing_sha256,
                    max_retries=era5.max_retries, backoff_s=era5.retry_backoff_s)
