"""What the numbers were measured on: CPU, cores, BLAS (library, version, kernels, threads),
NumPy and PyTorch versions, the OpenBLAS overrides in the environment, load, date, commit."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas() -> dict[str, object]:
    """The BLAS NumPy calls, as threadpoolctl sees it once it is loaded."""
    from threadpoolctl import threadpool_info

    np.ones((2, 2), dtype=np.float32) @ np.ones((2, 2), dtype=np.float32)  # load it
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in str(pool.get("filepath", "")):
            break
    else:
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if not pools:
            return {"library": "unknown"}
        pool = pools[0]
    return {
        "library": pool.get("internal_api"),
        "version": pool.get("version"),
        "architecture": pool.get("architecture"),
        "threads": pool.get("num_threads"),
        "threading_layer": pool.get("threading_layer"),
        "filepath": pool.get("filepath"),
    }


def torch_info(torch) -> dict[str, object]:
    config = torch.__config__.show()
    blas = next((line.strip() for line in config.splitlines() if "Math Kernel" in line), "")
    capability = next(
        (line.split(":", 1)[1].strip() for line in config.splitlines() if "CPU capability" in line),
        "",
    )
    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "blas": blas or "see torch.__config__.show()",
        "cpu_capability": capability,
    }


def git_commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def describe(torch=None) -> dict[str, object]:
    """Everything above as one JSON-ready dict."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": numpy_blas(),
        "openblas_env": {k: os.environ[k] for k in OPENBLAS_OVERRIDES if k in os.environ},
        "torch": torch_info(torch) if torch is not None else None,
        "git_commit": git_commit(),
        "load_average_1m_at_start": os.getloadavg()[0],
    }
