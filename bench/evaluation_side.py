"""Evaluation-side levers, for the head and the no-head baselines alike: flip averaging, the CRF (and its unary
scale), and the token resolution at evaluation.

For every data set (a config under ``configs/``) the shipped config is trained once per seed (``train.py``'s own
run, in ``--output``), and the seeds' readouts (the head and the no-head baselines, in one segmenter: the backbone
runs once per image) are evaluated by the protocol (shorter side 320, centre crop 320, Hungarian matching, labels at
320 px) on the val split under each variant, and on the training images' own labels under the ``--train_variants``
(``plain`` by default: every variant on 367 CamVid training images takes about an hour here):

* ``plain``: the protocol as ``train.py`` runs it;
* ``flip``: scores averaged with the mirror image's;
* ``crf10`` / ``crf2``: a dense CRF on ``softmax(s * cos)`` with s = 10 (ultra's) or 2 (STEGO's);
* ``tokens448``: the image upsampled to 448 px before the backbone (32 x 32 tokens instead of 22 x 22), the scores
  upsampled to the 320 px labels as usual.

    python bench/evaluation_side.py [--sets camvid,cocostuff_dev] [--variants plain,flip,...] [--train_variants plain]

Prints mIoU mean ± std over seeds of the head and of the best no-head baseline (by mean mIoU over seeds, per variant
and split) and the head's lead; writes every figure to ``--output``/evaluation_side.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation import stats  # noqa: E402  (bench/ is the script's folder)

import ultra  # noqa: E402
from ultra.data.transforms import EvalConfig  # noqa: E402
from ultra.evaluation.protocol import evaluate  # noqa: E402
from ultra.readout.crf import SCORE_SCALE  # noqa: E402
from ultra.readout.segmenter import Segmenter  # noqa: E402
from ultra.training.config import parse_training  # noqa: E402
from ultra.training.pipeline import train  # noqa: E402

SETS = {"camvid": "configs/camvid.yaml", "cocostuff_dev": "configs/cocostuff_dev.yaml"}
VARIANTS = {  # name -> (flip, crf, CRF unary scale, side the image is resized to before the backbone)
    "plain": (False, False, None, None),
    "flip": (True, False, None, None),
    "crf10": (False, True, 10.0, None),
    "crf2": (False, True, 2.0, None),
    "tokens448": (False, False, None, 448),
}
log = logging.getLogger("evaluation_side")


class UpsampledImages:
    """A protocol data set whose images are resized to ``side`` (labels untouched): more tokens, the same labels."""

    def __init__(self, dataset, side: int):
        self.dataset, self.side = dataset, side
        self.num_classes, self.classes = dataset.num_classes, dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["image"] = F.interpolate(
            item["image"][None], size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False
        )[0]
        return item


def evaluate_variant(segmenter: Segmenter, dataset, variant: str) -> dict[str, float]:
    """mIoU of every readout of ``segmenter`` under ``variant``."""
    flip, crf, scale, side = VARIANTS[variant]
    data = UpsampledImages(dataset, side) if side else dataset
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    report = evaluate(segmenter, data, trainer, flip=flip, crf=crf, crf_scale=scale or SCORE_SCALE)
    return {name: r["miou"] for name, r in (report["crf"] if crf else report)["readouts"].items()}


def run_set(name: str, variants: list[str], train_variants: list[str], seeds: list[int], output: Path) -> dict:
    root = output / name
    args = [
        "--config",
        str(REPO / SETS[name]),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--evaluation.run",
        "false",
        "--readout.probe",
        "false",
    ]
    train(args + ["--seeds", ",".join(map(str, seeds))])
    cli = parse_training(args)
    data, geometry = cli.datamodule, EvalConfig(**cli.config.evaluation)
    loaded = {s: ultra.load(root / f"seed-{s}" / "model.safetensors") for s in seeds}
    readouts = {f"{r}@{s}": loaded[s].readouts[r] for s in seeds for r in loaded[s].readouts}
    segmenter = Segmenter(loaded[seeds[0]].backbone, readouts, data.class_names, resize=geometry.resize).eval()
    transform = geometry.transform()
    splits = {"val": data.val_dataset.with_transform(transform), "train": data.train_dataset.with_transform(transform)}
    results = {}
    for variant in variants:
        for split, dataset in splits.items():
            if split == "train" and variant not in train_variants:
                continue
            miou = evaluate_variant(segmenter, dataset, variant)
            per_seed = [{r.partition("@")[0]: v for r, v in miou.items() if r.endswith(f"@{s}")} for s in seeds]
            raws = [r for r in per_seed[0] if r.startswith("raw")]
            best = max(raws, key=lambda r: statistics.fmean(p[r] for p in per_seed))
            results.setdefault(variant, {})[split] = {
                "head": stats([p["head"] for p in per_seed]),
                "best_raw": best,
                "raw": stats([p[best] for p in per_seed]),
                "lead": stats([p["head"] - p[best] for p in per_seed]),
                "every_readout": {r: stats([p[r] for p in per_seed]) for r in per_seed[0]},
            }
            log.info(
                "%s %s %s: head %.1f, %s %.1f",
                name,
                variant,
                split,
                100 * results[variant][split]["head"]["mean"],
                best,
                100 * results[variant][split]["raw"]["mean"],
            )
    return results


def format_table(results: dict) -> str:
    cell = lambda r: f"{100 * r['mean']:5.1f} ± {100 * r['std']:3.1f}"  # noqa: E731
    lines = ["mIoU % (mean ± std over seeds): head / best no-head baseline (its token space) / the head's lead"]
    for name, by_variant in results.items():
        for split in ("val", "train"):
            lines.append(f"{name} {split}")
            for variant, r in by_variant.items():
                if split not in r:
                    continue
                r = r[split]
                lines.append(
                    f"  {variant:<10} head {cell(r['head'])}   {r['best_raw']:<13} {cell(r['raw'])}   "
                    f"lead {cell(r['lead'])}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {list(SETS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--train_variants", default="plain", help="the variants also evaluated on the training images")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (one training run each)")
    parser.add_argument("--output", default="runs/evaluation_side", help="folder of the runs and evaluation_side.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    sets, variants, train_variants = args.sets.split(","), args.variants.split(","), args.train_variants.split(",")
    unknown = [s for s in sets if s not in SETS] + [v for v in variants + train_variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown sets or variants: {unknown}")
    torch.set_float32_matmul_precision("high")
    output = Path(args.output)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {name: run_set(name, variants, train_variants, seeds, output) for name in sets}
    (output / "evaluation_side.json").write_text(json.dumps(results, indent=1))
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
