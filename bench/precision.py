"""The backbone in bfloat16 against float32, in one run: speed, and how close the tokens stay.

On the same photos (CamVid's val images at 224 px, or random images with ``--random``), the frozen DINOv2 ViT-S/14
runs timm's float32 ``forward_features`` and ultra's :class:`~ultra.backbone.vit.FrozenViT` in ``fp32`` and ``bf16``
(the two measured in alternation, the fastest of ``--repeats`` batches each). Prints seconds per batch and the
ratios to timm's float32 forward, then, bf16 against fp32 tokens of the last block: the cosine per token (mean,
minimum) and the share of each token's 16 nearest neighbours (cosine, within the batch) both find. Also says what
``auto`` picks on this machine.

    python bench/precision.py [--batch 16] [--size 224] [--repeats 3] [--random]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import fastest  # noqa: E402


def _images(batch: int, size: int, random: bool) -> torch.Tensor:
    if random:
        return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    from realsets import open_set

    from ultra.data.transforms import EvalTransform

    photos = open_set("camvid", "val", transform=EvalTransform(size, size))
    return torch.stack([photos[i]["image"] for i in range(min(batch, len(photos)))])


def knn_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 16) -> float:
    """The mean share of each row's ``k`` nearest rows (cosine) that ``a`` and ``b`` agree on."""

    def neighbours(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        similarity = x @ x.T
        similarity.fill_diagonal_(-2)
        return similarity.topk(k, dim=1).indices

    first, second = neighbours(a), neighbours(b)
    same = (first[:, :, None] == second[:, None, :]).any(-1).float()
    return float(same.mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default="auto", help="backbone weights (auto: the offline DINOv2 ones here)")
    parser.add_argument("--random", action="store_true", help="random images instead of CamVid's val photos")
    args = parser.parse_args(argv)
    from ultra.backbone.precision import resolve_precision
    from ultra.backbone.vit import FrozenViT

    images = _images(args.batch, args.size, args.random)
    vits = {p: FrozenViT("vit_small_patch14_dinov2", weights=args.weights, precision=p) for p in ("fp32", "bf16")}
    last = vits["fp32"].num_layers - 1
    model = vits["fp32"].model

    @torch.inference_mode()
    def bare() -> None:
        model.forward_features(vits["fp32"].normalize(images))

    runs = {"timm fp32 forward_features": bare}
    runs |= {f"FrozenViT {p}": (lambda v=v: v(images, layers=[last], kinds=["x"])) for p, v in vits.items()}
    for fn in runs.values():
        fn()  # warm-up
    seconds = {name: float("inf") for name in runs}
    for _ in range(2):  # alternate so that the machine's drift touches every run alike
        for name, fn in runs.items():
            seconds[name] = min(seconds[name], fastest(fn, args.repeats))
    base = seconds["timm fp32 forward_features"]
    print(
        f"{len(images)} images of {args.size} px, {torch.get_num_threads()} threads; auto = "
        f"{resolve_precision('auto', 'cpu')} on this CPU"
    )
    for name, value in seconds.items():
        print(f"{name:28s} {value:7.3f} s per batch  ({value / base:.2f}x timm's fp32)")
    tokens = {p: v(images, layers=[last], kinds=["x"])["x", last].flatten(0, 2) for p, v in vits.items()}
    cosine = F.cosine_similarity(tokens["bf16"], tokens["fp32"], dim=-1)
    overlap = knn_overlap(tokens["bf16"], tokens["fp32"])
    print(f"bf16 vs fp32 tokens: cosine mean {cosine.mean():.5f}, min {cosine.min():.4f}; 16-NN overlap {overlap:.3f}")
    return {
        "seconds": seconds,
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "knn_overlap": overlap,
    }


if __name__ == "__main__":
    main()
