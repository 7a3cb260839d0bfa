"""One prepared device check: a whole training run on the device against the same run on the CPU, stage by stage.

The same config is trained twice with the library's own pipeline (``ultra.training.pipeline.train``), once with
``--trainer.accelerator cpu`` and once on ``--device``, each with its own feature cache, and what each stage made is
compared (agreement figures, not "it ran"):

- cache tokens: cosine per token of every cached key (the device runs the backbone in ``--precision``);
- graph: the share of each node's kNN neighbours both runs found (edge Jaccard, by node and overall);
- exact head: cosines of the principal angles between the two heads' column spaces;
- k-means readout and evaluation: every readout's mIoU and pixel accuracy side by side;
- ``segment``: each checkpoint loaded on its own device segments the validation images; the share of pixels whose
  label agrees.

Every stage is timed on both (the run's own timings, then ``segment``), and last the global kNN graph of the scaling
bench's synthetic cache (``bench/scale.py``, 27 classes, 384-d float16 tokens) is built on the device at
``--graph-tokens`` (default 4.2M; 0 skips it). Works with random weights (default) or a weights file (the offline
DINOv2 weights as a float16 safetensors). Prints one table and writes ``gpu_check.json`` in ``--out``.

    python bench/gpu_check.py --out /tmp/gpu_check [--weights FILE] [--camvid DIR] [--graph-tokens 4200000]
    python bench/gpu_check.py --device cpu --small --out /tmp/gpu_check   # the test suite's smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SMALL = ["--data.views.size", "64", "--data.views.resize", "96", "--evaluation.resize", "64"]
SMALL += ["--evaluation.crop", "64", "--data.model_kwargs", '{"depth": 3, "embed_dim": 48, "num_heads": 3}']
SMALL += ["--data.backbone", "vit_tiny_patch16_224", "--data.knn.candidate_images", "4", "--model.out_dim", "8"]
SMALL += ["--readout.probe_steps", "10", "--readout.restarts", "1"]


def _config(folder: Path, camvid: Path | None, small: bool) -> Path:
    """The run's config: the CamVid folder's train/val splits, or synthetic scenes."""
    import yaml

    def scenes(seed: int) -> dict:
        count = (6 if seed == 0 else 4) if small else (96 if seed == 0 else 24)
        args = {"num_images": count, "size": 96 if small else 320, "num_classes": 5, "seed": seed}
        return {"class_path": "ultra.data.SyntheticScenes", "init_args": args}

    def camvid_split(split: str) -> dict:
        return {"class_path": "ultra.data.ImageFolder", "init_args": {"root": str(camvid), "split": split}}

    train, val = (camvid_split("train"), camvid_split("val")) if camvid else (scenes(0), scenes(1))
    config = {
        "seed_everything": 0,
        "model": {"out_dim": 32},
        "data": {
            "train_dataset": train,
            "val_dataset": val,
            "feature_layers": [-1],
            "graphs": [{"kind": "xx", "layer": -1}],
        },
        "trainer": {"devices": 1, "enable_progress_bar": False, "logger": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _val_set(args: argparse.Namespace):
    """The validation images as the evaluation sees them (the protocol's geometry applied)."""
    from ultra.data import ImageFolder, SyntheticScenes
    from ultra.data.transforms import EvalConfig

    geometry = EvalConfig(64, 64) if args.small else EvalConfig()
    if args.camvid:
        return ImageFolder(args.camvid, split="val", transform=geometry.transform())
    return SyntheticScenes(
        4 if args.small else 24, 96 if args.small else 320, 5, seed=1, transform=geometry.transform()
    )


def _train(config: Path, root: Path, accelerator: str, precision: str, args: argparse.Namespace) -> dict:
    from ultra.training.pipeline import train

    overrides = ["--config", str(config), "--trainer.accelerator", accelerator, "--trainer.default_root_dir"]
    overrides += [str(root), "--data.cache.dir", str(root / "cache"), "--data.weights", args.weights, "--fresh"]
    overrides += ["--data.precision", precision]
    start = time.perf_counter()
    report = train(overrides + (SMALL if args.small else []))
    report["wall_s"] = time.perf_counter() - start
    return report


def _cache(root: Path):
    from ultra.data.cache import FeatureCache

    (folder,) = [p for p in (root / "cache").rglob("meta.json")]
    return FeatureCache(folder.parent)


def token_agreement(a, b) -> dict:
    """Cosine per token of every key the two caches share: mean and minimum."""
    figures = {}
    for key in sorted(set(a.keys) & set(b.keys)):
        x, y = a.tensor(key).float().flatten(0, -2), b.tensor(key).float().flatten(0, -2)
        cosine = torch.nn.functional.cosine_similarity(x, y, dim=-1)
        figures[f"{key[0]}{key[1]}"] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
    return figures


def graph_agreement(a: Path, b: Path) -> dict:
    """Edge Jaccard of the two caches' stored graphs: overall and the mean over nodes."""
    from ultra.graphs.sparse import SparseGraph

    figures = {}
    for path in sorted((a / "graphs").glob("*.safetensors")):
        if path.name.startswith("views"):
            continue
        first, second = SparseGraph.load(path), SparseGraph.load(b / "graphs" / path.name)
        edges = [set(zip(_rows(g).tolist(), g.indices.tolist())) for g in (first, second)]
        both = edges[0] & edges[1]
        per_node = np.zeros(first.num_nodes)
        union = np.zeros(first.num_nodes)
        for r, _ in both:
            per_node[r] += 1
        for r, _ in edges[0] | edges[1]:
            union[r] += 1
        figures[path.name.split("-")[0]] = {
            "edges_jaccard": len(both) / max(1, len(edges[0] | edges[1])),
            "node_jaccard_mean": float(np.mean(per_node[union > 0] / union[union > 0])),
        }
    return figures


def _rows(graph) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(graph.num_nodes), graph.indptr[1:] - graph.indptr[:-1])


def head_agreement(a: Path, b: Path) -> dict:
    """Principal-angle cosines between the column spaces of the two checkpoints' heads."""
    from safetensors.torch import load_file

    weights = [load_file(str(p / "model.safetensors")) for p in (a, b)]
    (key,) = [k for k in weights[0] if k.startswith("head.head.") and k.endswith("weight")][:1]
    q = [torch.linalg.qr(w[key].double().T).Q for w in weights]
    cosines = torch.linalg.svdvals(q[0].T @ q[1])
    return {"subspace_cosine_mean": float(cosines.mean()), "subspace_cosine_min": float(cosines.min())}


def _segment_all(checkpoint: Path, device: str, precision: str, val, weights: str) -> tuple[list, float]:
    from ultra.readout.checkpoint import load

    segmenter = load(checkpoint, device=device, weights=weights, precision=precision)
    start = time.perf_counter()
    labels = [segmenter.segment(val[i]["image"]) for i in range(len(val))]
    return labels, time.perf_counter() - start


def _agree(first: list, second: list) -> float:
    return sum(int((x == y).sum()) for x, y in zip(first, second)) / sum(x.numel() for x in first)


def segment_agreement(a: Path, b: Path, device: str, val, weights: str, precision: str) -> dict:
    """``segment`` of the validation images: the CPU run's checkpoint on the CPU (float32) and on the device (inference
    alone), and each run's checkpoint on its own device (training and inference); pixels that agree, and seconds."""
    on_cpu, cpu_s = _segment_all(a / "model.safetensors", "cpu", "fp32", val, weights)
    moved, device_s = _segment_all(a / "model.safetensors", device, precision, val, weights)
    own, _ = _segment_all(b / "model.safetensors", device, precision, val, weights)
    return {
        "same_checkpoint_pixels_agree": _agree(on_cpu, moved),
        "own_checkpoints_pixels_agree": _agree(on_cpu, own),
        "cpu_s": cpu_s,
        "device_s": device_s,
    }


def graph_at_scale(tokens: int, device: str, folder: Path) -> dict:
    """Seconds of the global kNN graph of the scaling bench's synthetic cache of about ``tokens`` tokens on
    ``device``."""
    from scale import GRID, VIEWS, _settings, write_synthetic_cache

    from ultra.data.cache import FeatureCache
    from ultra.graphs.knn import GraphSpec, KnnConfig
    from ultra.graphs.store import load_or_build_graphs

    images = max(8, round(tokens / (VIEWS * GRID[0] * GRID[1])))
    cache = FeatureCache(write_synthetic_cache(folder / "scale-cache", images))
    knn = KnnConfig(**_settings()["knn"])
    start = time.perf_counter()
    load_or_build_graphs(cache, [GraphSpec("xx", cache.keys[0][1])], knn, False, device=device)
    return {"tokens": cache.num_nodes, "seconds": time.perf_counter() - start}


def compare(cpu: dict, device: dict, out: Path, args: argparse.Namespace) -> dict:
    """Every agreement figure and both runs' timings."""
    a, b = out / "cpu", out / "device"
    cache_a, cache_b = _cache(a), _cache(b)
    val_set = _val_set(args)
    runs = {"cpu": cpu, "device": device}
    return {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "precision": device["settings"]["backbone"]["precision"],
        "tokens": token_agreement(cache_a, cache_b),
        "graphs": graph_agreement(cache_a.path, cache_b.path),
        "head": head_agreement(a, b),
        "readouts": {
            name: {side: {k: report["readouts"][name][k] for k in ("miou", "acc")} for side, report in runs.items()}
            for name in cpu["readouts"]
        },
        "segment": segment_agreement(a, b, args.device, val_set, args.weights, args.precision),
        "timings": {
            side: {**report["settings"]["timings"], "wall_s": report["wall_s"]} for side, report in runs.items()
        },
    }


def format_table(figures: dict) -> str:
    """The figures as the README's GPU table shows them."""
    lines = [f"device {figures['device']}, backbone {figures['precision']} (CPU: fp32)", "stage | agreement"]
    for key, value in figures["tokens"].items():
        lines.append(f"cache tokens {key} | cosine mean {value['mean']:.5f}, min {value['min']:.4f}")
    for key, value in figures["graphs"].items():
        lines.append(
            f"graph {key} | edge Jaccard {value['edges_jaccard']:.3f}, per node {value['node_jaccard_mean']:.3f}"
        )
    head = figures["head"]
    lines.append(
        f"exact head | subspace cosine mean {head['subspace_cosine_mean']:.4f}, min {head['subspace_cosine_min']:.4f}"
    )
    for name, sides in figures["readouts"].items():
        cpu, device = sides["cpu"], sides["device"]
        lines.append(
            f"readout {name} | mIoU {100 * cpu['miou']:.1f} / {100 * device['miou']:.1f}, "
            f"acc {100 * cpu['acc']:.1f} / {100 * device['acc']:.1f} (CPU / device)"
        )
    seg = figures["segment"]
    lines.append(
        f"segment | same checkpoint {100 * seg['same_checkpoint_pixels_agree']:.2f}% of pixels, "
        f"each run's own {100 * seg['own_checkpoints_pixels_agree']:.2f}%"
    )
    lines.append("stage | CPU s | device s | ratio")
    timings = figures["timings"]
    for stage in timings["cpu"]:
        cpu, device = timings["cpu"][stage], timings["device"].get(stage, float("nan"))
        lines.append(f"{stage} | {cpu:.2f} | {device:.2f} | {cpu / max(device, 1e-9):.1f}x")
    lines.append(f"segment_s | {seg['cpu_s']:.2f} | {seg['device_s']:.2f} | {seg['cpu_s'] / seg['device_s']:.1f}x")
    if "graph_at_scale" in figures:
        scale = figures["graph_at_scale"]
        lines.append(f"graph build at {scale['tokens'] / 1e6:.2f}M tokens on the device | {scale['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (runs, caches, gpu_check.json)")
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    parser.add_argument("--precision", default="auto", help="the device's backbone arithmetic (auto, bf16, fp32)")
    parser.add_argument("--weights", default="random", help="backbone weights: random or a weights file")
    parser.add_argument("--camvid", type=Path, help="a CamVid folder (train/val splits) instead of synthetic scenes")
    parser.add_argument("--graph-tokens", type=int, default=4_200_000, help="tokens of the graph-scale build (0: skip)")
    parser.add_argument("--small", action="store_true", help="a tiny random ViT at 56 px (the smoke test)")
    args = parser.parse_args(argv)
    for run in ("cpu", "device", "scale-cache"):  # the check's own folders: every stage is built cold
        shutil.rmtree(args.out / run, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    config = _config(args.out, args.camvid, args.small)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    cpu_report = _train(config, args.out / "cpu", "cpu", "fp32", args)
    device_report = _train(config, args.out / "device", accelerator, args.precision, args)
    figures = compare(cpu_report, device_report, args.out, args)
    if args.graph_tokens:
        figures["graph_at_scale"] = graph_at_scale(args.graph_tokens, args.device, args.out)
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    print(format_table(figures))
    return figures


if __name__ == "__main__":
    main()
