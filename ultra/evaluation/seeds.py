"""Several seeds of one run: every figure's mean and standard deviation over them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from .protocol import best_baselines, group_rows

FIGURES = ("miou", "acc", "miou_present")


def _stats(values: list[float]) -> dict:
    """Mean and sample standard deviation; the deviation of one value is undefined (``None``), not zero."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def summarize_readouts(reports: list[Mapping]) -> dict:
    """One group's readouts (of one report per seed): mean and deviation of every figure, and the best no-head
    baseline by mean mIoU."""
    readouts = {
        name: {f: _stats([report["readouts"][name][f] for report in reports]) for f in FIGURES}
        for name in reports[0]["readouts"]
    }
    means = {name: {f: r[f]["mean"] for f in FIGURES} for name, r in readouts.items()}
    return {"readouts": readouts, "best_baseline": best_baselines(means)}


def summarize(reports: Mapping[int, dict]) -> dict:
    """Mean and (sample) standard deviation over seeds of every readout's figures (and after the CRF, when it ran)
    and of the stage timings; the head is compared with the no-head baseline of the best mean mIoU."""
    seeds = list(reports)
    first = reports[seeds[0]]
    timings = {
        k: _stats([reports[s]["settings"]["timings"].get(k, 0.0) for s in seeds])
        for k in first["settings"].get("timings", {})
    }
    crf = {"crf": summarize_readouts([reports[s]["crf"] for s in seeds])} if "crf" in first else {}
    return {
        "seeds": seeds,
        **summarize_readouts([reports[s] for s in seeds]),
        **crf,
        "timings": timings,
        "settings": {k: v for k, v in first["settings"].items() if k not in ("seed", "timings")},
    }


def format_summary(summary: dict) -> str:
    """The table of a summary: mean +- std over seeds, in percent (one seed: its figures, and a line saying that a
    standard deviation needs two)."""
    seeds = ",".join(str(s) for s in summary["seeds"])
    lines = [f"{'readout (seeds ' + seeds + ')':<34} {'mIoU':>13} {'acc':>13}"]
    spread = lambda r: "" if r["std"] is None else f" ± {100 * r['std']:3.1f}"  # noqa: E731
    cells = lambda r: [f"{100 * r[f]['mean']:5.1f}{spread(r[f])}" for f in ("miou", "acc")]  # noqa: E731
    rows, gaps = group_rows(
        summary, lambda label, r: f"{label:<34} {cells(r)[0]:>13} {cells(r)[1]:>13}", lambda figure: figure["mean"]
    )
    lines += rows
    if len(summary["seeds"]) == 1:
        lines.append("one seed: no standard deviation (it needs at least two seeds)")
    lines += gaps
    if summary["timings"]:
        lines.append("time (s): " + ", ".join(f"{k[:-2]} {v['mean']:.1f}" for k, v in summary["timings"].items()))
    return "\n".join(lines)
