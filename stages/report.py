"""Round against round: the accuracy of every evaluated benchmark in every round of a run, how sure each figure
is, and which changes are more than chance, as a table and a chart.

One row per benchmark and round. Round 0 is the base model, so `vs round 0` is what the run's self-alignment has
bought by that round, and `vs previous` what the round itself added. Accuracies come from the summaries that
`savi eval` writes beside each table, with a 95% Wilson interval; `strict` is the same replies read by savi's own
parser (blank under likelihood, where nothing is parsed). A change is measured on the questions both rounds
answered, paired by question id, on the options the protocol read (a reply lmms-eval would answer at random
counts as wrong there), and carries the exact McNemar p-value of those pairs; at p >= 0.05 it is
labelled `noise`: a change that size happens by chance when the two models are equally good. `chance` is what
guessing scores: the mean over the questions of 1 / (number of options). A table evaluated on frames perturbed in
time (`savi eval --perturb`, `<benchmark>@<kind>`) has `vs true order`: its change from the same round's
evaluation in the true order, measured the same way. A model that reads time loses accuracy there; one that
ignores it loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import nan
from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.stats import discordant, mcnemar_exact, wilson_interval
from stages.core.store import Artifact, Run, atomic_path
from stages.eval import summaries, true_order_table

SIGNIFICANCE = 0.05  # a change with a McNemar p-value at or above this is within the noise

COLUMNS = ["benchmark", "protocol", "round", "questions", "accuracy", "95% CI", "strict", "chance", "vs round 0",
           "vs previous", "vs true order"]


@dataclass(frozen=True)
class Report:
    rounds: list[int]
    columns: list[str]
    rows: list[list[Any]]
    accuracy: dict[str, dict[int, float | None]]  # benchmark table -> round -> accuracy
    interval: dict[str, dict[int, tuple[float, float]]]  # benchmark table -> round -> 95% CI, where scored
    chance: dict[str, float | None]  # benchmark table -> accuracy of guessing; None without scored questions


@dataclass(frozen=True)
class Scored:
    """One evaluation's questions that have an answer and a decoded video: whether each was right, and how many
    options it had."""

    correct: dict[str, bool]
    options: dict[str, int]


def build(run: Run) -> Report:
    found = summaries(run)
    if not found:
        raise SaviError(f"run '{run.name}' has no evaluations yet; run `savi eval BENCH --data PATH --run "
                        f"{run.name} --round 0` (the base model) and again for a trained round")
    rounds = sorted({s["round"] for s in found})
    accuracy: dict[str, dict[int, float | None]] = {}
    interval: dict[str, dict[int, tuple[float, float]]] = {}
    chance: dict[str, float | None] = {}
    rows = []
    for table in sorted({s["table"] for s in found}):
        evals = [s for s in found if s["table"] == table]  # `summaries` sorts them by round
        scored = {s["round"]: _scored(run.eval_artifact(table, s["round"])) for s in evals}
        options = {q: k for result in scored.values() for q, k in result.options.items()}
        chance[table] = sum(1 / k for k in options.values()) / len(options) if options else None
        accuracy[table], interval[table] = {}, {}
        earlier: list[int] = []  # this benchmark's rounds so far that have an accuracy
        for s in evals:
            r = s["round"]
            accuracy[table][r] = s["accuracy"]
            vs_base = vs_previous = None
            if s["accuracy"] is not None:
                # Around the protocol's accuracy, which credits lmms-eval's random guesses with 1/k each.
                interval[table][r] = wilson_interval(s["accuracy"] * s["questions"], s["questions"])
                if earlier and earlier[0] == 0 and r != 0:
                    vs_base = _change(scored[0], scored[r])
                if earlier:
                    vs_previous = _change(scored[earlier[-1]], scored[r])
                earlier.append(r)
            protocol = s.get("protocol", s.get("mode"))  # summaries written before protocols say "mode"
            strict = None if protocol == "likelihood" else _percent(s.get("strict_accuracy"))
            rows.append([table, protocol, r, s["questions"], _percent(s["accuracy"]),
                         _interval_text(interval[table].get(r)), strict, _percent(chance[table]), vs_base,
                         vs_previous, true_order_change(run, table, r)])
    columns = list(COLUMNS)
    if not any(true_order_table(table) for table in accuracy):  # no perturbed evaluation: no column for one
        columns, rows = columns[:-1], [row[:-1] for row in rows]
    return Report(rounds, columns, rows, accuracy, interval, chance)


def true_order_change(run: Run, table: str, round: int) -> str | None:
    """For a perturbed evaluation, its change from the same round's evaluation in the true order (as `_change`
    writes it); None for a table in the true order, or when that evaluation is not there."""
    true_table = true_order_table(table)
    if true_table is None or not run.eval_artifact(true_table, round).complete:
        return None
    return _change(_scored(run.eval_artifact(true_table, round)), _scored(run.eval_artifact(table, round)))


def _scored(art: Artifact) -> Scored:
    """The per-question results of one finished eval table, as `summarize` counts them (a row with no answer key
    or no video has `correct` None and is left out)."""
    table = art.read_table().select(["question_id", "correct", "options"]).to_pydict()
    correct, options = {}, {}
    for question, right, choices in zip(table["question_id"], table["correct"], table["options"]):
        if right is not None:
            correct[question], options[question] = right, len(choices)
    return Scored(correct, options)


def _change(before: Scored, after: Scored) -> str | None:
    """`+40.0 (p=0.021)`: the change in percentage points on the questions both rounds answered, with its exact
    McNemar p-value; `noise` when p >= 0.05, and how many questions were shared when either round had others."""
    shared = sorted(before.correct.keys() & after.correct.keys())
    if not shared:
        return None
    b, c = discordant([before.correct[q] for q in shared], [after.correct[q] for q in shared])
    p = mcnemar_exact(b, c)
    notes = [f"p={_p_value(p)}"]
    if p >= SIGNIFICANCE:
        notes.append("noise")
    if len(shared) != len(before.correct) or len(shared) != len(after.correct):
        notes.append(f"{len(shared)} shared")
    return f"{100 * (c - b) / len(shared):+.1f} ({', '.join(notes)})"


def _p_value(p: float) -> str:
    """Two significant digits (0.82, 0.021, 0.0003); tiny values as a bound rather than in exponent notation."""
    return "<0.0001" if p < 0.0001 else f"{p:.2g}"


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}"


def _interval_text(bounds: tuple[float, float] | None) -> str | None:
    return None if bounds is None else f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def write_chart(report: Report, path: Path, title: str) -> Path:
    """Grouped bars: one group per benchmark, one bar per round, each with its 95% CI as an error bar, and a
    dashed line across the group at the benchmark's chance level."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; also keeps the import from probing for one
    import matplotlib.pyplot as plt

    tables = sorted(report.accuracy)
    width = 0.8 / max(1, len(report.rounds))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(tables) + 3), 3.6), dpi=120)
    for k, r in enumerate(report.rounds):
        xs = [i + (k - (len(report.rounds) - 1) / 2) * width for i in range(len(tables))]
        bounds = [report.interval[t].get(r) for t in tables]
        # A round without an accuracy (not evaluated on that benchmark, or hidden answers) is NaN: no bar, no error
        # bar, rather than a bar at 0 that reads as a score. Error bars are distances below and above the bar.
        values = [nan if b is None else 100 * report.accuracy[t][r] for t, b in zip(tables, bounds)]
        below = [nan if b is None else v - 100 * b[0] for v, b in zip(values, bounds)]
        above = [nan if b is None else 100 * b[1] - v for v, b in zip(values, bounds)]
        ax.bar(xs, values, width, yerr=[below, above], capsize=2, error_kw={"elinewidth": 0.8},
               label="base (round 0)" if r == 0 else f"round {r}")
        for x, v, b in zip(xs, values, bounds):
            if b is not None:  # the label sits above the error bar, where it cannot hide it
                ax.text(x, 100 * b[1] + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    guessed = [(i, report.chance[t]) for i, t in enumerate(tables) if report.chance[t] is not None]
    for n, (i, chance) in enumerate(guessed):
        ax.hlines(100 * chance, i - 0.45, i + 0.45, colors="0.25", linestyles="dashed", linewidth=1,
                  label="chance" if n == 0 else None)  # one legend entry for all the groups
    ax.set_xticks(range(len(tables)), tables)
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_ylim(0, 112)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
