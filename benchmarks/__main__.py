"""Every benchmark in one run: a Markdown table on stdout and benchmarks/results.json.

    make bench                                  # sync, optional CPU torch, then this
    uv run python -m benchmarks [--quick] [--only steps,tracking,sweep,accuracy,memory,notebook]

fashion_mnist comes from Debian's `dataset-fashion-mnist` package or DoomNet's cache; without
it the sections that need it are skipped with a note (the step times then use random pixels of
the same shape). All figures come from the same run, with the machine's BLAS and thread count
recorded. The machine may be shared: compared variants are interleaved and medians reported
(see benchmarks/timing.py), and the load average is recorded. PyTorch is optional; without it
the PyTorch columns are skipped with a note. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE force older
OpenBLAS kernels: `make bench` unsets them for this command only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.torch_mlp import INSTALL_HINT, load_torch
from doomnet.data import DataError, find_idx_files

SECTIONS = ("steps", "tracking", "sweep", "accuracy", "memory", "notebook")
RESULTS = Path(__file__).with_name("results.json")
TARGETS = {
    "ratio_h20": 0.85,  # full batch, hidden 20: DoomNet / PyTorch step time
    "ratio_other": 1.0,  # hidden 256 and batch 128
    "fraction_of_limit_h20": 0.60,
    "tracking_overhead": 0.03,
    "notebook_wall_s": 180.0,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repeats, short runs: a smoke test"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")

    torch = load_torch()
    if torch is None:
        print(f"note: {INSTALL_HINT}", file=sys.stderr)
    results: dict = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "machine": machine.describe(torch),
        "targets": TARGETS,
    }
    if results["machine"]["openblas_env"]:
        print(
            f"note: {results['machine']['openblas_env']} is set; the figures are for those "
            "kernels (`make bench` unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE)",
            file=sys.stderr,
        )
    started = time.perf_counter()
    for section in sections:
        section_start = time.perf_counter()
        print(
            f"[{section}] running (load {os.getloadavg()[0]:.2f}) ...", file=sys.stderr, flush=True
        )
        try:
            results[section] = run_section(section, torch, quick=args.quick)
        except DataError as exc:  # fashion_mnist missing (offline): say so, go on
            reason = str(exc).splitlines()[0]
            print(f"[{section}] skipped: {reason}", file=sys.stderr)
            results[section] = {"skipped": reason}
        results[section]["load_average_1m_after"] = os.getloadavg()[0]
        results[section]["section_s"] = time.perf_counter() - section_start
        _write(args.out, results)
    results["total_s"] = time.perf_counter() - started
    results["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
    _write(args.out, results)
    print(table(results))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def run_section(section: str, torch, *, quick: bool) -> dict:
    if section in ("accuracy", "memory", "notebook"):
        find_idx_files("fashion_mnist", download=False)  # DataError if it is not here
    if section == "steps":
        from benchmarks import steps
        from benchmarks.data import training_set

        X, y, source = training_set()
        return {"data": source, **steps.run(torch, X, y, quick=quick)}
    if section == "tracking":
        from benchmarks import tracking_overhead

        return tracking_overhead.measure(
            iterations=300 if quick else 2000, rounds=2 if quick else 9
        )
    if section == "sweep":
        from benchmarks import sweep

        return sweep.measure(quick=quick)
    if section == "accuracy":
        from benchmarks import accuracy

        return accuracy.measure(torch, quick=quick)
    if section == "memory":
        from benchmarks import memory

        return {"full_batch": [memory.full_batch_rss(hidden) for hidden in (20, 256)]}
    if section == "notebook":
        from benchmarks import memory

        return memory.notebook(iterations=100 if quick else None)
    raise ValueError(section)


def _write(path: Path, results: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


# --- the table ---------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def _check(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def table(results: dict) -> str:
    """The README-ready Markdown: a header of where/when/how, then one row per figure."""
    m = results["machine"]
    blas = m["blas"]
    torch = m["torch"]
    lines = [
        f"Measured {m['date'][:10]} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"NumPy {m['numpy']} with {blas.get('library')} {blas.get('version')} "
        f"({blas.get('architecture')} kernels, {blas.get('threads')} threads); "
        + (
            f"PyTorch {torch['version']} CPU ({torch['threads']} threads, "
            f"{torch['cpu_capability']})"
            if torch
            else "PyTorch not installed"
        )
        + f"; load average {m['load_average_1m_at_start']:.2f} at start. "
        f"Command: `make bench` (`{results['command'].strip()}`), commit {m['git_commit']}.",
        "",
        "| figure | DoomNet | PyTorch | DoomNet / PyTorch | target | holds |",
        "|---|---|---|---|---|---|",
    ]

    def row(figure, doomnet, torch_value="–", ratio="–", target="", holds=None):
        lines.append(
            f"| {figure} | {doomnet} | {torch_value} | {ratio} | {target} | {_check(holds)} |"
        )

    for name in SECTIONS:
        if "skipped" in results.get(name, {}):
            lines.append(f"| {name}: skipped ({results[name]['skipped']}) | | | | | |")
    results = {k: v for k, v in results.items() if not (isinstance(v, dict) and "skipped" in v)}
    steps = results.get("steps")
    if steps:
        for case in steps["cases"]:
            h20_full = case["rows"] > 1000 and case["hidden"] == 20
            limit = TARGETS["ratio_h20"] if h20_full else TARGETS["ratio_other"]
            r = case["ratio_doomnet_torch"]
            row(
                f"step time, {case['case']}",
                _ms(case["doomnet_ms"]),
                _ms(case["torch_ms"]),
                "–" if r is None else f"{r:.2f}",
                f"≤ {limit:.2f}",
                None if r is None else r <= limit,
            )
        for case in steps["cases"]:
            h20_full = case["rows"] > 1000 and case["hidden"] == 20
            row(
                f"share of the matmul-bound limit, {case['case']}",
                f"{100 * case['fraction_of_peak_limit']:.0f}% of {_ms(case['limit_at_peak_ms'])} "
                f"(peak sgemm); {100 * case['fraction_of_same_shape_limit']:.0f}% of "
                f"{_ms(case['matmuls_same_shapes_ms'])} (same shapes)",
                target="≥ 60%" if h20_full else "",
                holds=case["fraction_of_peak_limit"] >= TARGETS["fraction_of_limit_h20"]
                if h20_full
                else None,
            )
        lines.append(
            f"| sgemm peak (float32, 2048³) | {steps['sgemm_peak_gflops']:.0f} GFLOP/s | | | | |"
        )
    tr = results.get("tracking")
    if tr:
        for key, label in (("training_loop", "training loop"), ("whole_run", "whole run")):
            t = tr[key]
            row(
                f"tracking overhead, {tr['iterations']} iterations × 4 metrics, {label}",
                f"{100 * t['overhead']:+.1f}% ({t['tracked_s']:.2f} s vs {t['untracked_s']:.2f} s)",
                target="≤ 3%",
                holds=t["overhead"] <= TARGETS["tracking_overhead"],
            )
        waited = tr.get("training_loop_waited")
        if waited:
            row(
                "tracking time inside the loop (callbacks + final flush), measured in the runs",
                f"{1000 * waited['callbacks_and_final_flush_s']:.0f} ms "
                f"({100 * waited['share_of_untracked_loop']:.1f}% of the untracked loop)",
                target="≤ 3%",
                holds=waited["share_of_untracked_loop"] <= TARGETS["tracking_overhead"],
            )
    sw = results.get("sweep")
    if sw:
        w = sw["workers"]
        row(
            f"sweep throughput, {sw['trials']} trials on {sw['data']} ({sw['sweeper']})",
            f"{w['1']['trials_per_minute']:.1f}/min (1 worker), "
            f"{w['2']['trials_per_minute']:.1f}/min (2 workers)",
        )
    acc = results.get("accuracy")
    if acc:
        r = acc["ratio_doomnet_torch"]
        row(
            f"time to {acc['target_val_acc']} val accuracy, fashion_mnist ({acc['recipe']})",
            f"{acc['doomnet_s']:.1f} s ({acc['doomnet_steps']} steps)",
            "–"
            if acc["torch_s"] is None
            else f"{acc['torch_s']:.1f} s ({acc['torch_steps']} steps)",
            "–" if r is None else f"{r:.2f}",
        )
    mem = results.get("memory")
    if mem:
        for fb in mem["full_batch"]:
            row(
                f"peak RSS, full-batch training 60000×784, hidden {fb['hidden']}",
                f"{fb['peak_rss_mb']:.0f} MB "
                f"({fb['training_adds_mb']:+.0f} MB over imports + data)",
            )
    nb = results.get("notebook")
    if nb:
        row(
            f"notebook recipe ({nb['iterations']} full-batch iterations, fashion_mnist), wall time",
            f"{nb['wall_s']:.0f} s",
            target="≤ 180 s",
            holds=nb["wall_s"] <= nb["wall_target_s"],
        )
        row(
            "notebook recipe, peak RSS",
            f"{nb['peak_rss_mb']:.0f} MB",
            target=f"≤ {nb['rss_target_mb']:.0f} MB (2 × {nb['data_float32_mb']:.0f} MB + 300 MB)",
            holds=nb["peak_rss_mb"] <= nb["rss_target_mb"],
        )
    if not torch:
        lines += ["", f"Note: {INSTALL_HINT}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
