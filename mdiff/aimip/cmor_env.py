"""Where CMOR runs: its interpreter, and the fixes Debian's python3-cmor 3.7 needs.

CMOR needs numpy 1.x, so it lives in an interpreter of its own: ``.venv-cmor`` (made by
scripts/setup.sh, found in the folder the workflow runs in) or, on clusters, the conda
environment envs/cmor.yaml (then the running interpreter has CMOR itself). `mdiff cmorize`
and `mdiff cmorize-gr` move into that interpreter by themselves (mdiff.cli), and
`mdiff validate` runs PrePARE there.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import sys
from pathlib import Path

CMOR_VENV_PYTHON = Path(".venv-cmor") / "bin" / "python"


def has_cmor() -> bool:
    """Whether this interpreter can import CMOR."""
    return importlib.util.find_spec("cmor") is not None


def cmor_python() -> str:
    """The interpreter with CMOR and PrePARE: .venv-cmor's when present, else this one."""
    return str(CMOR_VENV_PYTHON) if CMOR_VENV_PYTHON.exists() else sys.executable


def preload_libuuid() -> None:
    """Debian's CMOR build needs libuuid loaded first (else: undefined symbol uuid_unparse);
    conda's cmor links it itself, so a missing libuuid.so.1 is no error."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libuuid.so.1", mode=ctypes.RTLD_GLOBAL)


# PrePARE as a program of the CMOR interpreter, with the same preload as `import_cmor`.
PREPARE_CODE = ("import sys\n"
                "from mdiff.aimip.cmor_env import preload_libuuid\n"
                "preload_libuuid()\n"
                "from cmip6_cv.PrePARE import main\n"
                "sys.argv[0] = 'PrePARE'\n"
                "main()\n")
