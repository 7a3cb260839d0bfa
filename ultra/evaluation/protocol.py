"""The evaluation protocol as a Lightning test loop, and its report (table, JSON, pictures).

Every readout of a :class:`~ultra.readout.segmenter.Segmenter` is scored on the same images: clusters by
Hungarian-matched unsupervised mIoU/accuracy, the probe by plain mIoU/accuracy; with ``crf`` each
again after a dense CRF. Confusion matrices are torchmetrics states, summed across processes, and
the loader gives every image to exactly one process, so any number of processes reports the
same figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from ..data.base import SegmentationDataset
from ..data.grids import upsample_scores
from ..errors import DataError
from ..files import atomic_path
from ..pictures import overlay, save_confusion, save_sheet
from ..readout.crf import SCORE_SCALE, crf_labels
from ..readout.segmenter import Segmenter, apply_matching, readout_grid_scores
from .metrics import (
    SupervisedSegmentationMetric,
    UnsupervisedSegmentationMetric,
    as_floats,
    matched_confusion,
)

log = logging.getLogger(__name__)
LABELS = {
    "head": "head + k-means",
    "raw": "raw tokens + k-means",
    "raw_centred": "centred tokens + k-means",
    "raw_whitened": "whitened tokens + k-means",
    "probe": "linear probe (supervised)",
    "oracle": "probe logits + k-means (oracle)",
}


def best_baselines(readouts: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """For ``head``: the no-head baseline (a ``raw*`` readout of the same group, with or without CRF) of the highest
    mIoU, the one the head is compared with."""
    raws = [name for name in readouts if name.startswith("raw")]
    if "head" not in readouts or not raws:
        return {}
    return {"head": max(raws, key=lambda name: readouts[name]["miou"])}


def format_gaps(
    readouts: Mapping[str, Mapping], best: Mapping[str, str], value=lambda r: r, refinement: str = ""
) -> list[str]:
    """Lines "head vs the best no-head baseline (name): +x mIoU, +y acc", and with the oracle head (k-means on the
    probe's logits, of the same group) the share of the gap from that baseline to it the head closes (``value``
    reads a figure of a readout; ``refinement``, e.g. " + CRF", names the group)."""
    lines = []
    for head, raw in best.items():
        miou = {name: value(readouts[name]["miou"]) for name in (head, raw)}
        line = f"{head}{refinement} vs the best no-head baseline ({raw}{refinement}): " + ", ".join(
            f"{100 * (value(readouts[head][f]) - value(readouts[raw][f])):+.1f} {label}"
            for f, label in (("miou", "mIoU"), ("acc", "acc"))
        )
        if "oracle" in readouts and value(readouts["oracle"]["miou"]) > miou[raw]:
            ceiling = value(readouts["oracle"]["miou"])
            closed = (miou[head] - miou[raw]) / (ceiling - miou[raw])
            line += f"; {100 * closed:.0f}% of the gap to the oracle head ({100 * ceiling:.1f} mIoU)"
        lines.append(line)
    return lines


REFINEMENT_LABELS = {"plain": "", "crf": " + CRF"}
"""The groups of a report: every readout as it is (``plain``), and again after a dense CRF (``crf``)."""


def report_groups(report: Mapping) -> dict[str, Mapping]:
    """A report's (or a seed summary's) groups of readouts by their label (``""``, ``" + CRF"``): the plain ones, and
    the same readouts after a dense CRF (``report["crf"]``, present when the CRF ran); each a mapping with
    ``readouts`` and ``best_baseline``."""
    groups = {REFINEMENT_LABELS["plain"]: report}
    if "crf" in report:
        groups[REFINEMENT_LABELS["crf"]] = report["crf"]
    return groups


def group_rows(report: Mapping, row, value=lambda r: r) -> tuple[list[str], list[str]]:
    """A report's (or seed summary's) table: ``row(label, figures)`` for every readout of every group, and every
    group's gap lines (:func:`format_gaps`, ``value`` reading a figure)."""
    rows, gaps = [], []
    for refinement, group in report_groups(report).items():
        rows += [row(LABELS.get(name, name) + refinement, r) for name, r in group["readouts"].items()]
        gaps += format_gaps(group["readouts"], group["best_baseline"], value=value, refinement=refinement)
    return rows, gaps


def readout_metric(readout: torch.nn.Module, num_classes: int):
    """A readout's metric: Hungarian-matched for clusters, plain for class scores (the probe)."""
    if readout.outputs == "clusters":
        return UnsupervisedSegmentationMetric(num_classes, readout.num_outputs)
    return SupervisedSegmentationMetric(num_classes)


class EvaluationModule(pl.LightningModule):
    """Updates one metric per readout over the test loader, and with ``crf`` one more per readout after the CRF."""

    def __init__(
        self,
        segmenter: Segmenter,
        num_classes: int,
        flip: bool = False,
        crf: bool = False,
        crf_scale: float = SCORE_SCALE,
        examples: int = 6,
    ):
        super().__init__()
        self.segmenter, self.flip, self.crf, self.crf_scale, self.num_examples = (
            segmenter,
            flip,
            crf,
            crf_scale,
            examples,
        )
        groups = ["plain", "crf"] if crf else ["plain"]
        self.metrics = torch.nn.ModuleDict(
            {
                group: torch.nn.ModuleDict(
                    {name: readout_metric(readout, num_classes) for name, readout in segmenter.readouts.items()}
                )
                for group in groups
            }
        )
        self.examples: list[dict] = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images, labels = batch["image"], batch["label"]
        scores = self.segmenter.pixel_scores(images, tuple(labels.shape[-2:]), flip=self.flip)
        predictions = {group: {} for group in self.metrics}
        for name, s in scores.items():
            predictions["plain"][name] = s.argmax(1)
            if self.crf:
                predictions["crf"][name] = crf_labels(images, s, self.crf_scale).to(labels.device)
        for group, metrics in self.metrics.items():
            for name, metric in metrics.items():
                metric.update(predictions[group][name], labels)
        if self.global_rank == 0 and len(self.examples) < self.num_examples:
            for i in range(min(images.shape[0], self.num_examples - len(self.examples))):
                self.examples.append(
                    {
                        "image": images[i].cpu(),
                        "label": labels[i].cpu(),
                        **{group: {k: v[i].cpu() for k, v in p.items()} for group, p in predictions.items()},
                    }
                )

    def results(self) -> dict[str, dict[str, dict]]:
        """``{group: {readout: computed metric}}``, the groups ``plain`` and (with ``crf``) ``crf``."""
        return {group: {name: m.compute() for name, m in metrics.items()} for group, metrics in self.metrics.items()}


@torch.no_grad()
def score_token_grids(
    readout: torch.nn.Module, grids: Mapping, labels: torch.Tensor, num_classes: int, chunk: int = 16
) -> dict[str, float]:
    """The protocol's figures of one readout on token grids computed once (``{(kind, layer): [B, h, w, D]}``,
    of the protocol's images) and their labels ``[B, H, W]``: the scores upsampled to the labels, the argmax,
    one confusion matrix, Hungarian matching for clusters; mIoU and pixel accuracy. Many readouts of the same images
    (a benchmark's options) are scored without running the backbone again."""
    metric = readout_metric(readout, num_classes)
    for start in range(0, labels.shape[0], chunk):
        part = {key: grids[tuple(key)][start : start + chunk] for key in readout.keys}
        scores = upsample_scores(readout_grid_scores(readout, part), tuple(labels.shape[-2:]))
        metric.update(scores.argmax(1), labels[start : start + chunk].long())
    result = metric.compute()
    return {"miou": float(result["miou"]), "acc": float(result["acc"])}


def evaluation_loader(
    dataset: SegmentationDataset, trainer: pl.Trainer, batch_size: int, num_workers: int
) -> DataLoader:
    """A loader that gives each image to exactly one process (no padding duplicates under DDP)."""
    sampler = None
    if trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=lambda items: {
            "image": torch.stack([i["image"] for i in items]),
            "label": torch.stack([i["label"] for i in items]).long(),
        },
    )


def evaluate(
    segmenter: Segmenter,
    dataset: SegmentationDataset,
    trainer: pl.Trainer,
    output: str | Path | None = None,
    flip: bool = False,
    crf: bool = False,
    batch_size: int = 4,
    num_workers: int = 0,
    settings: dict | None = None,
    crf_scale: float = SCORE_SCALE,
) -> dict:
    """Run the protocol on ``dataset`` (already transformed) and return the JSON-able report (also written to
    ``output``).

    ``crf_scale``: the CRF's unary scale (:func:`ultra.readout.crf.crf_labels`)."""
    module = EvaluationModule(segmenter, dataset.num_classes, flip=flip, crf=crf, crf_scale=crf_scale)
    trainer.test(module, dataloaders=evaluation_loader(dataset, trainer, batch_size, num_workers), verbose=False)
    results = module.results()
    if all(int(metric.confusion.sum()) == 0 for metric in module.metrics["plain"].values()):
        raise DataError(
            f"the {len(dataset)} evaluated images hold no labelled pixel (every label is 'unlabelled', 255): "
            f"there is nothing to score"
        )
    groups = {}
    for group, computed in results.items():
        readouts = {k: as_floats(v) for k, v in computed.items()}
        groups[group] = {"readouts": readouts, "best_baseline": best_baselines(readouts)}
    report = {
        "settings": {**(settings or {}), "flip": flip, "crf": crf, "images": len(dataset)},
        "classes": list(dataset.classes),
        **groups["plain"],
        **({"crf": groups["crf"]} if crf else {}),
    }
    if trainer.is_global_zero:
        print(format_report(report))
        if output is not None:
            write_report(report, results, module.examples, dataset.classes, Path(output))
    return report


def format_report(report: dict) -> str:
    header = f"{'readout':<34} {'mIoU':>7} {'acc':>7} {'mIoU(present classes)':>22}"
    rows, gaps = group_rows(
        report,
        lambda label, r: (
            f"{label:<34} {100 * r['miou']:>6.1f}% {100 * r['acc']:>6.1f}% {100 * r['miou_present']:>21.1f}%"
        ),
    )
    return "\n".join([header, *rows, *gaps])


REPORT_FILES = ("eval.json", "examples.png", "confusion_*.png")
"""What a report folder holds: :func:`write_report` removes an earlier report's files before writing its own."""


def report_files(output: Path) -> list[Path]:
    """The files of a report already in ``output`` (what :func:`write_report` would remove)."""
    return sorted(path for pattern in REPORT_FILES for path in Path(output).glob(pattern))


def write_report(report: dict, results: dict, examples: list[dict], classes, output: Path) -> None:
    """The report into ``output``: a confusion picture per matched readout, the example sheet, ``eval.json`` last.
    A report folder holds one report: the files of an earlier one (e.g. the confusion of a readout this report does
    not have) are removed first."""
    output.mkdir(parents=True, exist_ok=True)
    for path in report_files(output):
        path.unlink()
    for group, computed in results.items():
        for name, r in computed.items():
            if "cluster_to_class" in r:
                matched = matched_confusion(r["confusion"], r["cluster_to_class"].to(r["confusion"].device))
                file = f"confusion_{name}{'' if group == 'plain' else '_' + group}.png"
                title = f"{name}{REFINEMENT_LABELS[group]}: true x matched"
                save_confusion(matched.T.cpu().numpy(), classes, output / file, title=title)
    if examples:
        panels, titles = [], []
        for ex in examples:
            picture = (ex["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            row, row_titles = (
                [picture, overlay(picture, ex["label"].numpy(), num_colors=len(classes))],
                ["image", "ground truth"],
            )
            for group, computed in results.items():
                for name, r in computed.items():
                    prediction = ex[group][name]
                    if "cluster_to_class" in r:
                        prediction = apply_matching(prediction, r["cluster_to_class"])
                    row.append(overlay(picture, prediction.numpy(), num_colors=len(classes)))
                    row_titles.append(name + REFINEMENT_LABELS[group])
            panels.append(row)
            titles.append(row_titles)
        save_sheet(panels, titles, output / "examples.png")
    with atomic_path(output / "eval.json") as tmp:  # last: a report with eval.json is complete
        tmp.write_text(json.dumps(report, indent=1))
    log.info("evaluation report written to %s", output)
