"""Running CDO (the Climate Data Operators binary): the call, its errors, its version.

Used by the ERA5 regridding (mdiff.data.regrid), the 1-degree AI-MIP files
(mdiff.aimip.regrid_gr) and the organisers' metrics (mdiff.evaluate.aimip_tree). Imports
nothing of mdiff, so it runs in the CMOR environment too.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def run(*args: object, cdo: str = "cdo", env: dict[str, str] | None = None, where: str = "",
        error: type[Exception] = RuntimeError) -> None:
    """``cdo -s -O args...``; a failure raises ``error`` naming ``where``, the command and the
    lines of CDO's output that say something (CDO and HDF5 print much noise)."""
    exe = shutil.which(cdo)
    if exe is None:
        raise error(f"CDO not found ({cdo}): install it (apt-get install cdo, or conda-forge cdo)")
    cmd = [exe, "-s", "-O", *map(str, args)]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith((" ", "HDF5-DIAG"))]
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}`{cdo} {' '.join(cmd[3:])}` failed (exit {proc.returncode}): "
                    + " | ".join(lines[-5:]))


def version(cdo: str = "cdo") -> str:
    """CDO's version number ("2.1.1"), or "?" when it cannot be asked."""
    try:
        proc = subprocess.run([cdo, "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        return "?"
    words = (proc.stdout + proc.stderr).split()  # "Climate Data Operators version 2.1.1 (...)"
    return next((w for w in words if w[:1].isdigit()), "?")
