"""Torch ``segment()`` against the exported file in onnxruntime, in one run: speed and agreement; and the same for
onnxruntime's int8 dynamic quantisation of that file (not offered by ``ultra-export``: its agreement stays below 98 %).

The checkpoint (default: the README's first command's ``runs/demo/model.safetensors``) is re-saved at the protocol's
shorter side ``--side`` (448) and exported; the file is quantised (int8 weights, onnxruntime's ``quantize_dynamic``
with its defaults). Then, on real photos (CamVid's and cocostuff-dev's val images):
- one photo at a time, end to end (resize, backbone, readout, upsampling to the photo, argmax): ``segment()`` in torch
  against :meth:`ultra.OnnxSegmenter.segment`, the fastest of ``--repeats`` runs, in images per second;
- a batch of ``--batch`` photos of one size, model inputs only (already resized): the same graph in torch
  (:class:`ultra.deploy.export.ExportedSegmenter`) against ``session.run``;
- agreement: the share of pixels each file labels as ``segment()`` does, over ``--photos`` photos (mean and the
  lowest photo), and int8 against float32.

    python bench/onnx_speed.py [--checkpoint runs/demo/model.safetensors] [--side 448] [--batch 8] [--photos 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import fastest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def real_photos(count: int, sets: list[str]) -> list[np.ndarray]:
    """``count`` val photos shared out over ``sets`` (``realsets`` names or ImageFolder folders), ``[H, W, 3]``
    uint8."""
    from realsets import open_set

    per_set, photos = -(-count // len(sets)), []
    for name in sets:
        data = open_set(name, "val")
        photos += [data[i]["image"].permute(1, 2, 0).contiguous().numpy() for i in range(min(per_set, len(data)))]
    return photos[:count]


def exports(checkpoint: Path, side: int, folder: Path) -> tuple[object, dict[str, Path]]:
    """The checkpoint's segmenter at the shorter side ``side``, its export, and that file with int8 weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import ultra
    from ultra.readout.checkpoint import save_segmenter

    segmenter = ultra.load(checkpoint, precision="fp32")
    segmenter.resize = side
    save_segmenter(segmenter, folder / "at_side.safetensors")
    files = {"none": ultra.export(folder / "at_side.safetensors", folder / "none.onnx"), "int8": folder / "int8.onnx"}
    quantize_dynamic(str(files["none"]), str(files["int8"]), weight_type=QuantType.QInt8)
    quantized = onnx.load(str(files["int8"]))
    if not any(p.key == "ultra" for p in quantized.metadata_props):  # OnnxSegmenter reads it
        quantized.metadata_props.extend(onnx.load(str(files["none"])).metadata_props)
        onnx.save_model(quantized, str(files["int8"]))
    return segmenter, files


def measure(segmenter, files: dict[str, Path], photos: list[np.ndarray], batch: int, repeats: int) -> dict:
    from ultra.backbone.image_size import resize_to_patches
    from ultra.deploy.export import ExportedSegmenter
    from ultra.deploy.runtime import OnnxSegmenter

    models = {q: OnnxSegmenter(path) for q, path in files.items()}
    tensors = [torch.from_numpy(p).permute(2, 0, 1) for p in photos]
    reference = [segmenter.segment(t).numpy() for t in tensors]
    agree = {
        q: [float((model.segment(p) == r).mean()) for p, r in zip(photos, reference)] for q, model in models.items()
    }
    int8_vs_fp32 = [float((models["int8"].segment(p) == models["none"].segment(p)).mean()) for p in photos]
    one = {"torch": fastest(lambda: segmenter.segment(tensors[0]), repeats, warm_up=True)}
    one.update({q: fastest(lambda m=m: m.segment(photos[0]), repeats, warm_up=True) for q, m in models.items()})
    first_size = photos[0].shape[:2]
    same = [t for t, p in zip(tensors, photos) if p.shape[:2] == first_size][:batch]
    images = resize_to_patches(torch.stack(same).float() / 255, segmenter.resize, segmenter.backbone.patch_size)
    graph = ExportedSegmenter(segmenter, "head").eval()
    many = {"torch": fastest(lambda: graph(images), repeats, warm_up=True)}
    many.update({q: fastest(lambda m=m: m.run(images.numpy()), repeats, warm_up=True) for q, m in models.items()})
    return {
        "photo_size": list(first_size),
        "input_size": list(images.shape[-2:]),
        "batch": len(same),
        "one_photo_per_s": {k: 1 / v for k, v in one.items()},
        "batch_images_per_s": {k: len(same) / v for k, v in many.items()},
        "agreement": {q: {"mean": float(np.mean(a)), "lowest": float(np.min(a))} for q, a in agree.items()},
        "int8_vs_fp32": {"mean": float(np.mean(int8_vs_fp32)), "lowest": float(np.min(int8_vs_fp32))},
        "file_mb": {q: path.stat().st_size / 1e6 for q, path in files.items()},
        "threads": {"torch": torch.get_num_threads()},
    }


def report(figures: dict) -> str:
    names = {"torch": "torch segment()", "none": "onnxruntime float32", "int8": "onnxruntime int8 weights"}
    lines = [
        f"photo {figures['photo_size'][0]}x{figures['photo_size'][1]} -> model input "
        f"{figures['input_size'][0]}x{figures['input_size'][1]}; batch of {figures['batch']}; "
        f"torch threads {figures['threads']['torch']}",
        f"{'engine':<26} {'one photo/s':>12} {'batch img/s':>12} {'vs torch':>9} {'agreement':>18} {'file MB':>8}",
    ]
    for key, label in names.items():
        ratio = figures["batch_images_per_s"][key] / figures["batch_images_per_s"]["torch"]
        agree = figures["agreement"].get(key)
        cell = f"{100 * agree['mean']:.2f}% (min {100 * agree['lowest']:.1f})" if agree else "reference"
        size = f"{figures['file_mb'][key]:.0f}" if key in figures["file_mb"] else ""
        lines.append(
            f"{label:<26} {figures['one_photo_per_s'][key]:>12.2f} {figures['batch_images_per_s'][key]:>12.2f} "
            f"{ratio:>8.2f}x {cell:>18} {size:>8}"
        )
    i8 = figures["int8_vs_fp32"]
    lines.append(
        f"int8 against float32: {100 * i8['mean']:.2f}% of pixels the same (lowest photo {100 * i8['lowest']:.1f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "demo" / "model.safetensors")
    parser.add_argument("--side", type=int, default=448, help="the protocol's shorter side of the exported model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--photos", type=int, default=16, help="photos for the agreement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", nargs="+", default=["camvid", "cocostuff"], help="photo sets (bench/realsets.py)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint} does not exist: run the README's first command, or pass --checkpoint")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        segmenter, files = exports(args.checkpoint, args.side, Path(folder))
        photos = real_photos(args.photos, args.sets)
        figures = measure(segmenter, files, photos, args.batch, args.repeats)
    print(report(figures))
    return figures


if __name__ == "__main__":
    main()
