"""The end-of-sweep table: one line per job, every failure listed with its reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class JobRow:
    number: int
    name: str
    status: str  # "COMPLETE", "FAILED", "PRUNED", ...
    value: float | None = None  # the objective (validation accuracy)
    reason: str = ""


def format_table(rows: Sequence[JobRow], title: str, direction: str = "maximize") -> str:
    """A fixed-width table, best objective marked with '*'."""
    scored = [r for r in rows if r.value is not None and r.status == "COMPLETE"]
    pick = max if direction == "maximize" else min
    best = pick(scored, key=lambda r: r.value) if scored else None
    width = max([len(r.name) for r in rows] + [4])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    head = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    lines = [
        f"{title}: {len(rows)} jobs ({head})",
        f"  {'#':>3}  {'run':<{width}}  {'status':<8}  {'val/acc':>7}",
    ]
    for r in sorted(rows, key=lambda r: r.number):
        value = f"{r.value:.4f}" if r.value is not None else "-"
        mark = "*" if r is best else " "
        line = f"{mark} {r.number:>3}  {r.name:<{width}}  {r.status:<8}  {value:>7}"
        if r.reason:
            line += f"  {r.reason}"
        lines.append(line)
    if best is not None:
        lines.append(f"best: #{best.number} {best.name}  val/acc {best.value:.4f}")
    return "\n".join(lines)


def format_study(
    rows: Sequence[JobRow], title: str, direction: str = "maximize", top: int = 10
) -> str:
    """A study's table: counts of every state, the `top` best COMPLETE trials (best first),
    then every FAIL with its reason. `format_table` lists all rows; a study can be long."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    head = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    scored = [r for r in rows if r.value is not None and r.status == "COMPLETE"]
    scored.sort(key=lambda r: r.value, reverse=direction == "maximize")
    failed = [r for r in rows if r.status == "FAIL"]
    shown = scored[:top] + failed
    width = max([len(r.name) for r in shown] + [4])
    lines = [
        f"{title}: {len(rows)} trials ({head})",
        f"  {'#':>3}  {'trial':<{width}}  {'status':<8}  {'value':>7}",
    ]
    for i, r in enumerate(shown):
        value = f"{r.value:.4f}" if r.value is not None else "-"
        mark = "*" if i == 0 and scored else " "
        line = f"{mark} {r.number:>3}  {r.name:<{width}}  {r.status:<8}  {value:>7}"
        if r.reason:
            line += f"  {r.reason}"
        lines.append(line)
    if len(scored) > top:
        lines.append(f"  ... {len(scored) - top} more complete trials")
    if scored:
        lines.append(f"best: #{scored[0].number} {scored[0].name}  value {scored[0].value:.4f}")
    return "\n".join(lines)
