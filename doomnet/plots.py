"""Figures (matplotlib, headless): the learning curve of one run, and the figures of a sweep
report (`doomnet report`, `doomnet compare`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas only for type hints: a training run imports this module
    import pandas as pd


def learning_curve(history: Sequence[dict[str, float]], title: str, path: Path) -> None:
    """Loss (left) and accuracy (right) against iteration, train and validation, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    # Fixed margins and legend places: every run draws this figure, and matplotlib's automatic
    # layout and "best" legend search over 2,000-point lines took most of its ~0.25 s.
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.14, top=0.83, wspace=0.22)
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(steps, [h[f"{split}/loss"] for h in history], style, label=split)
        ax_acc.plot(steps, [h[f"{split}/acc"] for h in history], style, label=split)
    ax_loss.set(xlabel="iteration", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="iteration", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    ax_loss.legend(loc="upper right")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- report figures (doomnet report / compare) --------------------------------------------------
# Sized for a paper: 7 inches wide, 150 dpi, 9 pt text. Inputs are plain pandas/lists; the
# numbers come from doomnet.report.

Histories = dict[str, list[tuple[int, float]]]  # metric -> [(step, value), ...]
WIDTH = 7.0
OBJECTIVE_LABEL = "final validation accuracy"
MAX_CONFIGS = 20  # configurations drawn in the configurations figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style():
    plt = _pyplot()
    return plt.rc_context(
        {
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "grid.linewidth": 0.6,
            "legend.frameon": False,
            "savefig.dpi": 150,
        }
    )


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _curve_axes(fig):
    ax_acc, ax_loss = fig.subplots(1, 2)
    ax_acc.set(xlabel="iteration", ylabel="validation accuracy", title="(a) validation accuracy")
    ax_loss.set(
        xlabel="iteration", ylabel="training loss (cross-entropy)", title="(b) training loss"
    )
    return ax_acc, ax_loss


def _plot_history(ax_acc, ax_loss, history: Histories, **style) -> None:
    for ax, key in ((ax_acc, "val/acc"), (ax_loss, "train/loss")):
        points = [(s, v) for s, v in history.get(key, []) if math.isfinite(v) and v > 0]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, **style)


def _loss_scale(ax) -> None:
    """Log scale when the losses span a decade or more, else linear without an offset."""
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.ones(1)])
    if values.max() / values.min() >= 10:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _legend_below(fig, ax) -> None:
    """The axes' legend under the figure, in as many columns as the label lengths allow."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(label) for label in labels)
    ncol = 3 if longest <= 30 else 2 if longest <= 48 else 1
    fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(handles)))


def report_curves(
    groups: Sequence[tuple[str, Sequence[Histories]]],
    pruned: Sequence[Histories],
    path: Path,
) -> None:
    """Validation accuracy and training loss against iteration: each group (a configuration,
    one line per seed) in its own colour, pruned runs faint grey underneath."""
    plt = _pyplot()
    with _style():
        fig = plt.figure(figsize=(WIDTH, 3.3), layout="constrained")
        ax_acc, ax_loss = _curve_axes(fig)
        for i, history in enumerate(pruned):
            label = f"pruned ({len(pruned)})" if i == 0 else None
            _plot_history(
                ax_acc, ax_loss, history, color="0.5", alpha=0.45, lw=0.8, zorder=1, label=label
            )
        colors = plt.get_cmap("tab10").colors
        for g, (label, histories) in enumerate(groups):
            for i, history in enumerate(histories):
                _plot_history(
                    ax_acc,
                    ax_loss,
                    history,
                    color=colors[g % 10],
                    lw=1.3,
                    alpha=0.9,
                    zorder=3 + len(groups) - g,
                    label=label if i == 0 else None,
                )
        _loss_scale(ax_loss)
        _legend_below(fig, ax_acc)
        _save(fig, path)


def compare_curves(runs: Sequence[tuple[str, Histories]], path: Path) -> None:
    """The curves of a few runs overlaid, one colour per run."""
    plt = _pyplot()
    with _style():
        fig = plt.figure(figsize=(WIDTH, 3.3), layout="constrained")
        ax_acc, ax_loss = _curve_axes(fig)
        colors = plt.get_cmap("tab10").colors
        for i, (label, history) in enumerate(runs):
            _plot_history(ax_acc, ax_loss, history, color=colors[i % 10], lw=1.3, label=label)
        _loss_scale(ax_loss)
        _legend_below(fig, ax_acc)
        _save(fig, path)


def _positions(values: Sequence[Any], log: bool) -> tuple[list[float], list[float], list[str]]:
    """x positions of `values` on an axis, and (ticks, tick labels) for categorical ones."""
    if all(_is_number(v) for v in values):
        return [float(v) for v in values], [], []
    categories = sorted({str(v) for v in values}, key=lambda c: (len(c), c))
    index = {c: i for i, c in enumerate(categories)}
    return [float(index[str(v)]) for v in values], list(range(len(categories))), categories


def objective_vs_params(
    frame: pd.DataFrame,
    swept: Sequence[str],
    logs: set[str],
    objective: str,
    path: Path,
    highlight: set[str] = frozenset(),
) -> None:
    """One panel per swept parameter: the objective of every finished run (runs whose id is in
    `highlight`, the best configuration, ringed), pruned runs as grey crosses at their last
    val/acc."""
    plt = _pyplot()
    finished = frame[(frame["state"] == "FINISHED") & frame[objective].notna()]
    pruned = frame[(frame["state"] == "PRUNED") & frame["last_val_acc"].notna()]
    best_config = finished["run_id"].isin(highlight)
    n = len(swept)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    rng = np.random.default_rng(0)  # the same jitter every time: diffable figures
    with _style():
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(WIDTH, 2.5 * nrows + 0.4),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        for ax, param in zip(axes.flat, swept, strict=False):
            log = param in logs
            every = list(finished[param]) + list(pruned[param])
            numeric = all(_is_number(v) for v in every)
            xs, ticks, labels = _positions(every, log)
            xs = np.asarray(xs)
            distinct = len(set(xs.tolist()))
            if numeric and distinct <= 12 and len(xs) > distinct:  # a grid: spread the seeds
                xs = _jitter(xs, log, rng)
            elif not numeric:
                xs = xs + rng.uniform(-0.12, 0.12, len(xs))
            x_done, x_pruned = xs[: len(finished)], xs[len(finished) :]
            if len(pruned):
                ax.scatter(
                    x_pruned,
                    pruned["last_val_acc"],
                    marker="x",
                    s=16,
                    color="0.6",
                    lw=0.9,
                    label="pruned (last val. acc.)",
                    zorder=2,
                )
            ax.scatter(
                x_done,
                finished[objective],
                s=18,
                color="C0",
                alpha=0.75,
                lw=0,
                label="finished run",
                zorder=3,
            )
            if best_config.any():
                ax.scatter(
                    x_done[best_config.to_numpy()],
                    finished.loc[best_config, objective],
                    s=60,
                    facecolors="none",
                    edgecolors="C3",
                    lw=1.2,
                    label="best configuration",
                    zorder=4,
                )
            if ticks:
                ax.set_xticks(ticks, labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            elif log:
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator())
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            elif distinct <= 6:  # a grid: a tick at each value
                values = sorted(set(float(v) for v in every))
                ax.set_xticks(values, [_label(v) for v in values])
                ax.minorticks_off()
            ax.set_xlabel(param + (" (log scale)" if log and numeric else ""))
        for ax in axes[:, 0]:
            ax.set_ylabel(OBJECTIVE_LABEL)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles))
        _save(fig, path)


def _jitter(xs: np.ndarray, log: bool, rng: np.random.Generator) -> np.ndarray:
    values = np.log10(xs) if log else xs
    distinct = np.unique(values)
    gap = np.diff(distinct).min() if len(distinct) > 1 else max(abs(distinct[0]), 1.0)
    spread = values + rng.uniform(-0.08, 0.08, len(values)) * gap
    return 10**spread if log else spread


def _axis_ticks(raw: np.ndarray, log: bool) -> list[float]:
    """Tick values for a numeric parallel axis: every value if few, else round numbers."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    distinct = sorted(set(raw.tolist()))
    if len(distinct) <= 6:
        return distinct
    lo, hi = min(distinct), max(distinct)
    if not log:
        ticks = [float(t) for t in MaxNLocator(nbins=5).tick_values(lo, hi) if lo <= t <= hi]
        return ticks if len(ticks) >= 2 else [lo, hi]
    for subs in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0)):  # decades first, finer if too few
        ticks = [
            float(t)
            for t in LogLocator(subs=subs, numticks=12).tick_values(lo, hi)
            if lo <= t <= hi
        ]
        if len(ticks) >= 3:
            return ticks
    return [lo, hi]


def parallel_coordinates(
    finished: pd.DataFrame, swept: Sequence[str], logs: set[str], objective: str, path: Path
) -> None:
    """One vertical axis per swept parameter plus the objective; each finished run a line
    through its values, coloured by the objective (best drawn on top). Numeric axes are scaled
    min-to-max (in log10 where `logs` says), categorical ones spaced evenly."""
    plt = _pyplot()
    import matplotlib as mpl

    columns = [*swept, objective]
    data = finished.sort_values(objective, kind="stable")
    scaled, tick_sets = [], []
    for col in columns:
        values = list(data[col])
        if all(_is_number(v) for v in values):
            log = col in logs
            raw = np.asarray(values, dtype=float)
            to_axis = np.log10 if log else np.asarray
            t = to_axis(raw)
            lo, hi = float(t.min()), float(t.max())

            def place(v, lo=lo, hi=hi):
                return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5, dtype=float)

            ticks = _axis_ticks(raw, log)
            labels = [f"{v:.4g}" for v in ticks]
            tick_sets.append(list(zip(place(to_axis(np.asarray(ticks))), labels, strict=True)))
            scaled.append(place(t))
        else:
            cats = sorted({str(v) for v in values}, key=lambda c: (len(c), c))
            where = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            tick_sets.append([(where[c], c) for c in cats])
            scaled.append(np.asarray([where[str(v)] for v in values]))
    ys = np.vstack(scaled).T  # (runs, axes)
    objective_values = data[objective].to_numpy(dtype=float)
    cmap = plt.get_cmap("viridis")
    color = mpl.colors.Normalize(objective_values.min(), objective_values.max())
    with _style():
        fig, ax = plt.subplots(figsize=(WIDTH, 3.4), layout="constrained")
        x = np.arange(len(columns))
        for row, value in zip(ys, objective_values, strict=True):
            ax.plot(x, row, color=cmap(color(value)), lw=1.1, alpha=0.85, zorder=2)
        for i, ticks in enumerate(tick_sets):
            ax.axvline(i, color="0.25", lw=0.8, zorder=1)
            for pos, text in ticks:
                ax.plot([i - 0.015, i], [pos, pos], color="0.25", lw=0.8, zorder=1)
                ax.text(
                    i - 0.025,
                    pos,
                    text,
                    ha="right",
                    va="center",
                    fontsize=7,
                    color="0.15",
                    zorder=3,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.6},
                )
        names = [c + (" (log)" if c in logs else "") for c in columns]
        names[-1] = OBJECTIVE_LABEL
        ax.set_xticks(x, names)
        ax.xaxis.tick_top()
        ax.tick_params(axis="x", length=0, pad=6)
        ax.set_yticks([])
        ax.grid(False)
        for side in ("left", "bottom", "top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlim(-0.35, len(columns) - 0.9)
        ax.set_ylim(-0.04, 1.04)
        _save(fig, path)


def configurations(
    configs: pd.DataFrame,
    frame: pd.DataFrame,
    swept: Sequence[str],
    objective: str,
    path: Path,
    limit: int = MAX_CONFIGS,
) -> None:
    """Mean objective per configuration (diamond) with its 95% t-interval, the seeds as grey
    dots; best on top, at most `limit` configurations. The axis stays within [0, 1]: an
    interval that reaches past it is cut at the edge."""
    plt = _pyplot()
    shown = configs.head(limit).iloc[::-1]
    values = frame.set_index("run_id")[objective]
    labels = [
        f"#{c['rank']}  " + (", ".join(f"{p}={_label(c[p])}" for p in swept) or "all runs")
        for _, c in shown.iterrows()
    ]
    with _style():
        fig, ax = plt.subplots(figsize=(WIDTH, 0.32 * len(shown) + 1.0), layout="constrained")
        y = np.arange(len(shown))
        extent = []
        for yi, (_, c) in zip(y, shown.iterrows(), strict=True):
            seeds = values.loc[c["run_ids"].split()].to_numpy(dtype=float)
            extent += list(seeds)
            ax.scatter(seeds, np.full(len(seeds), yi), s=14, color="0.45", zorder=2, lw=0)
            if c["n"] > 1:
                extent += [c["ci_low"], c["ci_high"]]
                ax.errorbar(
                    c["mean"],
                    yi,
                    xerr=[[c["mean"] - c["ci_low"]], [c["ci_high"] - c["mean"]]],
                    fmt="none",
                    ecolor="C0",
                    elinewidth=1.4,
                    capsize=3,
                    zorder=3,
                )
            ax.scatter([c["mean"]], [yi], marker="D", s=26, color="C0", zorder=4)
        lo, hi = min(extent), max(extent)
        pad = 0.05 * max(hi - lo, 0.01)
        ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad))
        ax.set_yticks(y, labels)
        ax.set_ylim(-0.6, len(shown) - 0.4)
        ax.set_xlabel(OBJECTIVE_LABEL)
        ax.grid(axis="y", alpha=0)
        _save(fig, path)


def importances(found: dict[str, float], path: Path) -> None:
    """Horizontal bars of parameter importances (fractions summing to 1), largest on top."""
    plt = _pyplot()
    items = sorted(found.items(), key=lambda kv: kv[1])
    names = [k for k, _ in items]
    shares = [v for _, v in items]
    with _style():
        fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 0.35 * len(items) + 1.0), layout="constrained")
        ax.barh(names, shares, color="C0", height=0.6)
        for i, v in enumerate(shares):
            ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.08)
        ax.set_xlabel("importance (fANOVA: share of the objective's variance)")
        ax.grid(axis="y", alpha=0)
        _save(fig, path)
