"""Peak memory and the notebook recipe, each in a fresh process (peak RSS: its VmHWM).

- Full-batch training on 60,000 x 784: `fit` for 20 full-batch iterations on the
  Fashion-MNIST training file (validation on its 10,000-row test file), untracked; also the
  process's peak before training (imports + data) so the training's own share shows.
- The notebook recipe, end to end as a user runs it (tracked, into a throwaway store):

      python train.py experiment=notebook data=fashion_mnist

  2,000 full-batch iterations on 54,000 x 784 (val 6,000) with metrics every iteration.
  Targets: wall time <= 3 minutes; peak RSS <= 2 x the data set's float32 size + 300 MB.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
FULL_BATCH_ITERATIONS = 20

_CHILD = """
import json, sys
from pathlib import Path

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6

from types import SimpleNamespace
from doomnet.data import load_source, to_unit
from doomnet.fit import fit
from doomnet.model import DoomNet

source = load_source("fashion_mnist", download=False)
splits = SimpleNamespace(
    X_train=to_unit(source.X, source.scale), y_train=source.y,
    X_val=to_unit(source.X_test, source.scale), y_val=source.y_test,
)
del source
before = peak_mb()
model = DoomNet(784, int(sys.argv[1]), 10, std=1e-4)
fit(model, splits, iterations=int(sys.argv[2]), lr=0.2)
print(json.dumps({"before_training_mb": before, "peak_mb": peak_mb(), "data_mb":
      (splits.X_train.nbytes + splits.X_val.nbytes) / 1e6}))
"""

# Runs a script as __main__ and prints the process's peak RSS (VmHWM) at exit. The kernel's
# ru_maxrss of a child also counts the moments before exec, when it is a copy of this (big)
# process; VmHWM belongs to the new program only.
_PEAK_AT_EXIT = """
import atexit, runpy, sys
from pathlib import Path

def report():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print("PEAK_RSS_KB", line.split()[1], file=sys.stderr, flush=True)

atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(command: list[str], cwd: Path) -> tuple[float, str, str]:
    """(wall seconds, stdout, stderr) of a child process."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout, done.stderr


def full_batch_rss(hidden: int = 20, iterations: int = FULL_BATCH_ITERATIONS) -> dict:
    _, stdout, _ = _run([sys.executable, "-c", _CHILD, str(hidden), str(iterations)], cwd=ROOT)
    info = json.loads(stdout.strip().splitlines()[-1])
    peak = info["peak_mb"]
    return {
        "rows": 60_000,
        "hidden": hidden,
        "iterations": iterations,
        "peak_rss_mb": peak,
        "before_training_mb": info["before_training_mb"],
        "training_adds_mb": peak - info["before_training_mb"],
        "data_float32_mb": info["data_mb"],
    }


def notebook(iterations: int | None = None) -> dict:
    """The notebook recipe on fashion_mnist as the app runs it: wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-c",
            _PEAK_AT_EXIT,
            str(ROOT / "train.py"),
            "experiment=notebook",
            "data=fashion_mnist",
            "progress=plain",
            f"tracking.uri=sqlite:///{Path(tmp) / 'mlflow.db'}",
            "tracking.experiment=benchmark",
            f"hydra.run.dir={Path(tmp) / 'outputs'}",
            *([f"iterations={iterations}"] if iterations else []),
        ]
        load_before = os.getloadavg()[0]
        seconds, _, stderr = _run(command, cwd=ROOT)
    peak_kb = re.findall(r"PEAK_RSS_KB (\d+)", stderr)
    peak = int(peak_kb[-1]) * 1024 / MB if peak_kb else None
    data_mb = 70_000 * 784 * 4 / MB  # train + val + test, float32: what the run holds
    found = re.search(r"val_acc ([0-9.]+)", stderr)
    return {
        "command": "python train.py experiment=notebook data=fashion_mnist",
        "iterations": iterations or 2000,
        "wall_s": seconds,
        "wall_target_s": 180.0,
        "peak_rss_mb": peak,
        "data_float32_mb": data_mb,
        "rss_target_mb": 2 * data_mb + 300,
        "rss_target_60k_rows_mb": 2 * 60_000 * 784 * 4 / MB + 300,
        "final_val_acc": float(found.group(1)) if found else None,
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0],
    }
