"""Several seeds of one run: the ``--seeds`` argument, and every figure's mean and standard deviation over them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from ..errors import ConfigError
from .protocol import LABELS, best_baselines, format_gaps

FIGURES = ("miou", "acc", "miou_present")
SEED_RANGE = range(2**32)
"""The seeds numpy (and so Lightning's ``seed_everything``) accepts."""


def split_seeds_argument(args: list[str]) -> tuple[list[int] | None, list[str]]:
    """``--seeds 0,1,2`` (or ``--seeds=0,1,2``) taken out of ``args``: the seeds, and the other arguments."""
    rest, seeds = [], None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--seeds" or arg.startswith("--seeds="):
            if arg == "--seeds":
                if i + 1 >= len(args):
                    raise ConfigError("--seeds needs a comma-separated list of integers, e.g. --seeds 0,1,2")
                value, i = args[i + 1], i + 2
            else:
                value, i = arg.split("=", 1)[1], i + 1
            seeds = _parse_seeds(value)
            continue
        rest.append(arg)
        i += 1
    if seeds is not None and any(a == "--seed_everything" or a.startswith("--seed_everything=") for a in rest):
        raise ConfigError("--seeds and --seed_everything exclude each other")
    return seeds, rest


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got '{value}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct integers, got '{value}'")
    outside = [seed for seed in seeds if seed not in SEED_RANGE]
    if outside:
        raise ConfigError(f"--seeds must lie in 0 .. 2**32 - 1 (numpy's seeds); {outside[0]} does not")
    return seeds


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
