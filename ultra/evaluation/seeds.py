"""Several seeds of one run: every figure's mean and standard deviation over them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from .protocol import LABELS, best_baselines, format_gaps

FIGURES = ("miou", "acc", "miou_present")


def _stats(values: list[float]) -> dict:
    """Mean and sample standard deviation; the deviation of one value is undefined (``None``), not zero."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def summarize(reports: Mapping[int, dict]) -> dict:
    """Mean and (sample) standard deviation over seeds of every readout's figures and of the stage timings; the
    head is compared with the no-head baseline of the best mean mIoU."""
    seeds = list(reports)
    first = reports[seeds[0]]
    readouts = {
        name: {f: _stats([reports[s]["readouts"][name][f] for s in seeds]) for f in FIGURES}
        for name in first["readouts"]
    }
    timings = {
        k: _stats([reports[s]["settings"]["timings"].get(k, 0.0) for s in seeds])
        for k in first["settings"].get("timings", {})
    }
    means = {name: {f: r[f]["mean"] for f in FIGURES} for name, r in readouts.items()}
    return {
        "seeds": seeds,
        "readouts": readouts,
        "best_baseline": best_baselines(means),
        "timings": timings,
        "settings": {k: v for k, v in first["settings"].items() if k not in ("seed", "timings")},
    }


def format_summary(summary: dict) -> str:
    """The table of a summary: mean +- std over seeds, in percent (one seed: its figures, and a line saying that a
    standard deviation needs two)."""
    seeds = ",".join(str(s) for s in summary["seeds"])
    lines = [f"{'readout (seeds ' + seeds + ')':<34} {'mIoU':>13} {'acc':>13}"]
    spread = lambda r: "" if r["std"] is None else f" ± {100 * r['std']:3.1f}"  # noqa: E731
    for name, r in summary["readouts"].items():
        base, _, crf = name.partition("+")
        label = LABELS.get(base, base) + (" + CRF" if crf else "")
        cells = [f"{100 * r[f]['mean']:5.1f}{spread(r[f])}" for f in ("miou", "acc")]
        lines.append(f"{label:<34} {cells[0]:>13} {cells[1]:>13}")
    if len(summary["seeds"]) == 1:
        lines.append("one seed: no standard deviation (it needs at least two seeds)")
    lines += format_gaps(summary["readouts"], summary["best_baseline"], value=lambda figure: figure["mean"])
    if summary["timings"]:
        lines.append("time (s): " + ", ".join(f"{k[:-2]} {v['mean']:.1f}" for k, v in summary["timings"].items()))
    return "\n".join(lines)
