"""Atomic writes (an interrupted job never leaves a half file that looks complete) and
file checksums.

``atomic_path`` writes beside the target under a hidden temporary name
(``.{name}.XXXXXXXX.part``) and renames it onto the target only on success. A process
killed with SIGKILL cannot remove that temporary: the next run of the same stage removes
its own with ``remove_stale_temporaries`` (nothing else writes those names).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the final file the usual umask-based mode (shared clusters)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries ``atomic_path`` made for ``path`` and did not remove (a killed process)."""
    import glob

    path = Path(path)
    return sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(path.parent)),
                                                          f".{glob.escape(path.name)}.*.part")))


def remove_stale_temporaries(*paths: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``paths`` left by a killed run; returns what was removed.
    Call it when a stage starts, for the files that stage alone writes."""
    removed = []
    for path in paths:
        for tmp in stale_temporaries(path):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_netcdf(ds, path: str | os.PathLike, **kwargs) -> None:
    """Write an xarray Dataset atomically (NetCDF4, float32 data as given)."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4", **kwargs)


def sha256_file(path: str | os.PathLike, block: int = 2**22) -> str:
    """The sha256 of a file's bytes (hex), read in blocks of ``block`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
