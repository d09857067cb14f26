"""Make PyTorch available to the benchmarks if it can be had locally, never from the network.

    python -m benchmarks.torch_setup [WHEEL_DIR]     (WHEEL_DIR defaults to $TORCH_WHEELS)

If torch imports, says so. Otherwise, if WHEEL_DIR holds a CPU torch wheel for this Python
(`torch-*+cpu-cp311-*.whl` on CPython 3.11), installs that file into this interpreter's
environment with `uv pip install` (its few small dependencies come from the package index;
torch itself only from the file, so the multi-GB CUDA build is never pulled). Otherwise prints
one line on how to get a CPU build and exits 0: the benchmarks then run without PyTorch.
torch is deliberately not a project dependency (not in pyproject.toml or uv.lock).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.torch_mlp import INSTALL_HINT


def matching_wheel(folder: Path) -> Path | None:
    """The newest CPU torch wheel in `folder` built for this interpreter and machine."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    arch = platform.machine()
    wheels = sorted(
        p
        for p in folder.glob(f"torch-*+cpu-{tag}-{tag}-*.whl")
        if arch in p.name and sys.platform in p.name
    )
    return wheels[-1] if wheels else None


def main(argv: list[str]) -> int:
    try:
        import torch
    except ImportError:
        pass
    else:
        print(f"torch {torch.__version__} is installed")
        return 0
    folder = argv[0] if argv and argv[0] else os.environ.get("TORCH_WHEELS", "")
    wheel = matching_wheel(Path(folder)) if folder and Path(folder).is_dir() else None
    if wheel is None:
        where = f" (no CPU torch wheel for this Python in {folder})" if folder else ""
        print(f"note{where}: {INSTALL_HINT}")
        return 0
    uv = shutil.which("uv") or os.environ.get("UV")
    if not uv:
        print(f"note: found {wheel} but no `uv` on PATH to install it; {INSTALL_HINT}")
        return 0
    print(f"installing {wheel.name} into {sys.prefix} (benchmarks only; not a project dependency)")
    done = subprocess.run([uv, "pip", "install", "--python", sys.executable, str(wheel)])
    if done.returncode != 0:
        print(f"note: installing {wheel} failed; {INSTALL_HINT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
