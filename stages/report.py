"""Round against round: the accuracy of every evaluated benchmark in every round of a run, as a table and a chart.

Round 0 is the base model, so the last column, the change from round 0 to the latest round, is what the run's
self-alignment bought. Rows come from the summaries that `savi eval` writes beside each table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.store import Run, atomic_path
from stages.eval import summaries


@dataclass(frozen=True)
class Report:
    rounds: list[int]
    columns: list[str]
    rows: list[list[Any]]
    accuracy: dict[str, dict[int, float | None]]  # benchmark table -> round -> accuracy


def build(run: Run) -> Report:
    found = summaries(run)
    if not found:
        raise SaviError(f"run '{run.name}' has no evaluations yet; run `savi eval BENCH --data PATH --run "
                        f"{run.name} --round 0` (the base model) and again for a trained round")
    rounds = sorted({s["round"] for s in found})
    accuracy: dict[str, dict[int, float | None]] = {}
    details: dict[str, dict[str, set[Any]]] = {}
    for s in found:
        accuracy.setdefault(s["table"], {})[s["round"]] = s["accuracy"]
        info = details.setdefault(s["table"], {"mode": set(), "questions": set()})
        info["mode"].add(s["mode"])
        info["questions"].add(s["questions"])

    columns = ["benchmark", "mode", "questions"] + [f"round {r}" for r in rounds] + ["change"]
    rows = []
    for table, by_round in sorted(accuracy.items()):
        info = details[table]
        cells = [_percent(by_round.get(r)) for r in rounds]
        rows.append([table, "/".join(sorted(info["mode"])), "/".join(map(str, sorted(info["questions"]))),
                     *cells, _change(by_round)])
    return Report(rounds, columns, rows, accuracy)


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}"


def _change(by_round: dict[int, float | None]) -> str | None:
    """Latest round against round 0, in percentage points; None without both."""
    latest = max(by_round)
    if 0 not in by_round or latest == 0 or by_round[0] is None or by_round[latest] is None:
        return None
    return f"{100 * (by_round[latest] - by_round[0]):+.1f}"


def write_chart(report: Report, path: Path, title: str) -> Path:
    """Grouped bars: one group per benchmark, one bar per round."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; also keeps the import from probing for one
    import matplotlib.pyplot as plt

    tables = sorted(report.accuracy)
    width = 0.8 / max(1, len(report.rounds))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(tables) + 2), 3.6), dpi=120)
    for k, r in enumerate(report.rounds):
        xs = [i + (k - (len(report.rounds) - 1) / 2) * width for i in range(len(tables))]
        values = [100 * (report.accuracy[t].get(r) or 0.0) for t in tables]
        bars = ax.bar(xs, values, width, label="base (round 0)" if r == 0 else f"round {r}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(tables)), tables)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    except OSError as e:
        raise SaviError(f"cannot write the chart to {path}: {e.strerror}; pass --chart with a path in a writable "
                        "folder") from None
    finally:
        plt.close(fig)
    return path
