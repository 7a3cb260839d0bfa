"""Ablation of the head's options on real photos: each option against the shipped config, over seeds, in one run.

For every data set (a config under ``configs/``) and every option (a list of command-line overrides
of that config), the head is fitted exactly as ``train.py`` fits it (``trainer.fit`` of the
config's module and data module), k-means runs once per seed, and every readout is scored by the
protocol (shorter side 320, centre crop 320, bilinear upsampling of the scores, one confusion
matrix, Hungarian matching) on the val split and on the training images' own labels (never seen
by the head or the clusters). The raw-token baselines (block outputs, final-LayerNorm tokens,
centred, PCA-whitened) are scored the same way in the same run. The backbone runs once per image:
training tokens come from one feature cache holding every option's tokens, evaluation tokens are
computed once per split, shared by all options and kept for the next run (``<cache root>/ablation/``; the
same figures, without the backbone's quarter of an hour on CamVid). Options that change only the
self-training reuse the default's fit. No CRF and no flip averaging here (they are
evaluation-side and slow; ``train.py --evaluation.crf true`` measures them).

    python bench/ablation.py [--sets camvid,cocostuff_dev] [--options default,norm,...] [--seeds 0,1,2]

Prints one table (mIoU mean ± std over seeds, in percent) and writes every figure to ``--output``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from levers import GRAPH_LEVERS, READOUT_LEVERS, GraphLeverInput, ReadoutLeverInput  # noqa: E402

from ultra.data.cache import FeatureCache  # noqa: E402
from ultra.data.standardise import token_map  # noqa: E402
from ultra.data.transforms import EvalConfig  # noqa: E402
from ultra.evaluation.protocol import score_token_grids  # noqa: E402
from ultra.files import atomic_path, cache_root  # noqa: E402
from ultra.head.projection import ProjectionHead  # noqa: E402
from ultra.readout.fit import CachedRows, ReadoutConfig, fit_centroids, oracle_readout  # noqa: E402
from ultra.readout.probe import train_probe  # noqa: E402
from ultra.readout.segmenter import ClusterReadout, ProbeReadout  # noqa: E402
from ultra.readout.self_training import SelfTrainingConfig, self_trained_head  # noqa: E402
from ultra.training.config import parse_training  # noqa: E402
from ultra.training.pipeline import fit_head  # noqa: E402

log = logging.getLogger("ablation")

SETS = {"camvid": "configs/camvid.yaml", "cocostuff_dev": "configs/cocostuff_dev.yaml"}
OPTIONS = {  # name -> overrides of the shipped config
    "default": [],
    "group_views": ["--data.knn.group_views", "true"],
    "norm": ["--data.tokens", "n", "--data.graphs", '[{"kind": "nn", "layer": 11}]'],
    "m32": ["--model.out_dim", "32"],
    "m100": ["--model.out_dim", "100"],
    "k8": ["--data.knn.k_any", "8"],
    "k32": ["--data.knn.k_any", "32"],
    "view0": ["--model.view_weight", "0"],
    "view1": ["--model.view_weight", "1"],
    "graphs_feat9-11": [
        "--data.graphs",
        '[{"kind": "xx", "layer": 9}, {"kind": "xx", "layer": 10}, {"kind": "xx", "layer": 11}]',
    ],
    "graphs_feat_kq_vv11": [
        "--data.graphs",
        '[{"kind": "xx", "layer": 11}, {"kind": "kq", "layer": 11}, {"kind": "vv", "layer": 11}]',
    ],
    "input_x9-11": ["--data.feature_layers", "[9, 10, 11]"],
    "extra_clusters5": ["--readout.extra_clusters", "5"],
    "graph_centred": ["--data.knn.space", "centred"],
    "graph_whitened": ["--data.knn.space", "whitened"],
    **{
        f"self_train{rounds}": ["--self_training.rounds", str(rounds), "--self_training.balance", "none"]
        for rounds in (1, 2, 3)
    },
    "self_train2_first": ["--self_training.rounds", "2", "--self_training.balance", "first"],
    "self_train2_embedding": ["--self_training.rounds", "2", "--self_training.features", "embedding"],
    "self_train_until_stable": ["--self_training.rounds", "6", "--self_training.stop_change", "0.05"],
}


def after_fit(option: str) -> bool:
    """Whether an option changes only what follows the fit (the self-training): it reuses the default's fit."""
    overrides = OPTIONS.get(option, [])
    return bool(overrides) and all(not o.startswith("--") or o.startswith("--self_training.") for o in overrides)


RAW_VARIANTS = ("x", "x_centred", "x_whitened", "n")
LEVERS = [*GRAPH_LEVERS, *READOUT_LEVERS]
"""Options without overrides, measured on the default fit (``bench/levers.py``): graph levers solve the default's
forms again with another spectral form; readout levers read the default head's embedding another way."""


def eval_tokens(data, geometry, dataset, keys, batch_size: int = 8) -> tuple[dict, torch.Tensor]:
    """Token grids of the protocol's images (:meth:`ultra.backbone.vit.FrozenViT.collect_grids`, as the evaluation
    computes them) and their labels, kept (float32, as computed) under ``<cache root>/ablation/`` and read back by
    the next run of the same images, backbone, keys and protocol."""
    identity = [dataset.fingerprint(), data.backbone.describe(), sorted(keys), geometry.resize, "float32"]
    digest = hashlib.sha256(json.dumps([*identity, geometry.crop], default=str).encode()).hexdigest()[:16]
    path = cache_root() / "ablation" / f"eval-tokens-{digest}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return {tuple(json.loads(k)): v for k, v in saved["grids"].items()}, saved["labels"]
    loader = DataLoader(
        dataset.with_transform(geometry.transform()), batch_size=batch_size, collate_fn=lambda items: items
    )
    labels = []

    def images():
        for items in loader:
            labels.append(torch.stack([it["label"] for it in items]).to(torch.uint8))
            yield torch.stack([it["image"] for it in items])

    grids = data.backbone.eval().collect_grids(images(), keys, dtype=torch.float32)
    with atomic_path(path) as tmp:
        torch.save({"grids": {json.dumps(list(k)): v for k, v in grids.items()}, "labels": torch.cat(labels)}, tmp)
    return grids, torch.cat(labels)


def stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def run_set(config: str, options: list[str], seeds: list[int], workdir: Path, extra: Sequence[str] = ()) -> dict:
    """Every option and lever of one data set (a training config, with ``extra`` overrides)."""
    name = Path(config).stem
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false", *extra]
    clis = {
        opt: parse_training(
            ["--config", config, *OPTIONS[opt], *quiet, "--trainer.default_root_dir", str(workdir / name / opt)]
        )
        for opt in options
        if opt in OPTIONS
    }
    base = clis[options[0]].datamodule
    layer = base.feature_keys[-1][1]
    raw_keys = {("x", layer), ("n", layer)}
    train_keys = sorted(set().union(*(c.datamodule.cache_keys for c in clis.values())) | raw_keys)
    start = time.perf_counter()
    cache = FeatureCache.open_or_build(
        base.train_dataset,
        base.backbone,
        train_keys,
        base.views.transform(),
        base.cache_config.folder(),
        batch_size=base.cache_config.batch_size,
    )
    eval_keys = sorted(set().union(*(set(c.datamodule.feature_keys) for c in clis.values())) | raw_keys)
    splits = {"val": base.val_dataset, "train": base.train_dataset}
    geometry = EvalConfig(**clis[options[0]].config.evaluation)
    evaluation = {split: eval_tokens(base, geometry, dataset, eval_keys) for split, dataset in splits.items()}
    log.info("%s: caches and evaluation tokens in %.0f s", name, time.perf_counter() - start)
    num_classes = len(base.class_names)
    readout_config = ReadoutConfig(
        **clis[options[0]].config.readout
    )  # the config's k-means restarts and sample, as train.py

    def centroids(rows: CachedRows, k: int, seed: int) -> torch.Tensor:
        return fit_centroids(rows, k, seed, readout_config.restarts, readout_config.kmeans_sample)

    results = {"options": {}, "raw": {}, "reference": {}}

    def scored(readout_for_seed) -> dict:
        """Every split's mIoU and accuracy, mean and std over the seeds, of ``readout_for_seed(seed)``."""
        per_split = {split: [] for split in splits}
        for seed in seeds:
            readout = readout_for_seed(seed)
            for split, (tokens, labels) in evaluation.items():
                per_split[split].append(score_token_grids(readout, tokens, labels, num_classes))
        return {split: {f: stats([r[f] for r in rs]) for f in ("miou", "acc")} for split, rs in per_split.items()}

    def logged(group: str, row: str) -> None:
        figures = {s: round(100 * v["miou"]["mean"], 1) for s, v in results[group][row].items() if s in splits}
        log.info("%s %s %s: %s", name, group, row, figures)

    for variant in RAW_VARIANTS:
        kind, _, space = variant.partition("_")
        keys = [(kind, layer)]
        module = token_map(cache, keys, space or "raw")
        results["raw"][variant] = scored(
            lambda seed, keys=keys, module=module: ClusterReadout(
                keys, centroids(CachedRows(cache, keys, module), num_classes, seed), token_map=module
            )
        )
        logged("raw", variant)
    probes = {
        seed: train_probe(cache, base.feature_keys, num_classes, readout_config.probe_steps, seed=seed, progress=False)
        for seed in seeds
    }
    results["reference"]["probe"] = scored(lambda seed: ProbeReadout(base.feature_keys, probes[seed]))
    results["reference"]["oracle"] = scored(
        lambda seed: oracle_readout(
            cache, base.feature_keys, probes[seed], seed, readout_config.restarts, readout_config.kmeans_sample
        )
    )
    for row in results["reference"]:
        logged("reference", row)

    def record(opt: str, fit_s: float, readout_for_seed) -> None:
        results["options"][opt] = {"fit_s": fit_s, **scored(readout_for_seed)}
        log.info("%s %s: fit %.1f s", name, opt, fit_s)
        logged("options", opt)

    def kmeans_readouts(head, k, keys, self_training=SelfTrainingConfig()):
        """Per seed: the head's self-training (as ``train.py`` runs it, if any), then k-means on its outputs."""

        def readout(seed):
            trained, _ = self_trained_head(
                head, cache, keys, k, self_training, seed, readout_config.restarts, progress=False
            )
            return ClusterReadout(keys, centroids(CachedRows(cache, keys, trained), k, seed), trained)

        return readout

    for opt in clis:
        cli = clis[opt]
        module, data = cli.model, cli.datamodule
        start = time.perf_counter()
        if after_fit(opt):  # the default's fitted head, then this option's self-training
            module = clis["default"].model
        else:
            fit_head(cli.trainer, module, data)
        k = num_classes + cli.config.readout.extra_clusters
        self_training = SelfTrainingConfig(**cli.config.self_training)
        record(
            opt, time.perf_counter() - start, kmeans_readouts(module.head.eval(), k, data.feature_keys, self_training)
        )
    levers = [opt for opt in options if opt in GRAPH_LEVERS or opt in READOUT_LEVERS]
    if not levers:
        return results
    default = clis["default"].model  # the exact solver keeps the forms it solved
    forms, settings, head = default.forms, default.hparams, default.head.eval()
    chunk, keys = 1 << 16, base.feature_keys
    rows = torch.cat(
        [
            cache.rows(keys, torch.arange(s, min(s + chunk, cache.num_nodes))).float()
            for s in range(0, cache.num_nodes, chunk)
        ]
    )
    graph_input = GraphLeverInput(forms, rows, cache, head.net.weight.detach())
    with torch.no_grad():
        quotients = default.solution.quotients
        log.info("the head's spectral quotients: %s", [round(float(q), 3) for q in quotients])
        shape = (cache.num_views, *cache.grid)
        readout_input = ReadoutLeverInput(head, head(rows), shape, num_classes, keys, cache, quotients)
    for opt in levers:
        start = time.perf_counter()
        if opt in GRAPH_LEVERS:
            lever_forms = copy.deepcopy(forms)
            lever_forms.spectral = GRAPH_LEVERS[opt](graph_input)
            solution = lever_forms.solve(
                settings.out_dim, settings.view_weight, settings.ridge, settings.trivial_threshold
            )
            lever_head = ProjectionHead(head.in_dim, head.out_dim).eval()
            lever_head.net.weight.data.copy_(solution.weight)
            record(opt, time.perf_counter() - start, kmeans_readouts(lever_head, num_classes, keys))
        else:
            record(opt, time.perf_counter() - start, lambda seed: READOUT_LEVERS[opt](readout_input, seed))
    return results


def format_table(results: dict) -> str:
    """The head's options, the raw baselines and the references (with labels), then the default head beside the best
    raw variant and the oracle head: how much of the gap between them it closes."""
    sets, splits = list(results), ("val", "train")
    cell = lambda r: f"{100 * r['miou']['mean']:5.1f} ± {100 * r['miou']['std']:3.1f}"  # noqa: E731
    header = f"{'option':<30}" + "".join(f"{s + ' ' + split:>22}" for s in sets for split in splits)
    lines = []
    for group, title in (
        ("options", "head + k-means, mIoU % (mean ± std over seeds)"),
        ("raw", "raw tokens + k-means, mIoU %"),
        ("reference", "with labels: oracle = k-means on the probe's logits (the best linear map + k-means), probe"),
    ):
        lines += ["", title, header] if lines else [title, header]
        for row in results[sets[0]][group]:
            lines.append(
                f"{row:<30}" + "".join(f"{cell(results[s][group][row][split]):>22}" for s in sets for split in splits)
            )
    summary = []
    for s in sets:
        for split in splits:
            mean = lambda group, row: results[s][group][row][split]["miou"]["mean"]  # noqa: E731
            raw = max(mean("raw", variant) for variant in results[s]["raw"])
            head = mean("options", "default") if "default" in results[s]["options"] else float("nan")
            oracle = mean("reference", "oracle")
            closed = (head - raw) / (oracle - raw) if oracle > raw else float("nan")
            summary.append(
                f"{s} {split}: head {100 * head:.1f}, best raw {100 * raw:.1f}, oracle {100 * oracle:.1f} "
                f"({100 * closed:.0f}% of the gap closed)"
            )
    return "\n".join(lines + ["", "default head, best raw variant, oracle head: " + "; ".join(summary)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {list(SETS)} or training configs")
    parser.add_argument("--config_args", default="", help="overrides added to every set's config (one string)")
    parser.add_argument(
        "--options", default=",".join([*OPTIONS, *LEVERS]), help=f"comma-separated, of {[*OPTIONS, *LEVERS]}"
    )
    parser.add_argument("--seeds", default="0,1,2", help="k-means seeds")
    parser.add_argument("--output", default="runs/ablation.json", help="JSON file of every figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("ablation", "ultra.data.cache"):
        logging.getLogger(name).setLevel(logging.INFO)
    sets, options = args.sets.split(","), args.options.split(",")
    configs = {Path(s).stem: str(REPO / SETS[s]) if s in SETS else s for s in sets}
    unknown = [s for s, c in configs.items() if not Path(c).is_file()] + [
        o for o in options if o not in OPTIONS and o not in LEVERS
    ]
    if unknown:
        parser.error(f"unknown sets or options: {unknown}")
    # first: every table compares with it, and the levers and the self-training options start from its fit
    options = ["default", *(o for o in options if o != "default")]
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_float32_matmul_precision("high")
    with tempfile.TemporaryDirectory() as workdir:
        results = {
            name: run_set(config, options, seeds, Path(workdir), shlex.split(args.config_args))
            for name, config in configs.items()
        }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
