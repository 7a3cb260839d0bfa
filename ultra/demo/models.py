"""What a demo serves: the checkpoint's segmenter (or why there is none) and the backbone every tab uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..backbone.names import DEFAULT_BACKBONE
from ..backbone.vit import FrozenViT
from ..errors import USER_ERRORS
from ..readout.checkpoint import load
from ..readout.segmenter import Segmenter
from .tasks import escape_markdown

log = logging.getLogger(__name__)

TRAIN_HINT = (
    "Train one with `python train.py --config configs/camvid.yaml` (it writes "
    "`runs/camvid/model.safetensors`), then start `ultra-demo --checkpoint runs/camvid/model.safetensors`."
)


@dataclass
class DemoModels:
    """``segmenter``: the checkpoint's, or None; ``problem``: why there is none (Markdown, shown in the page);
    ``vit``: the backbone of Select and Look inside (the checkpoint's own when there is one)."""

    segmenter: Segmenter | None
    problem: str | None
    vit: FrozenViT
    size: int = 448

    @classmethod
    def open(
        cls,
        checkpoint: str | Path | None = None,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | None = None,
        device: str = "cpu",
        size: int = 448,
        precision: str = "auto",
    ) -> DemoModels:
        """Load ``checkpoint`` with :func:`ultra.load` (the same validation); a refused checkpoint becomes the page's
        ``problem`` and the other tabs run on ``backbone`` with ``weights`` (default: the checkpoint's own, else
        ``auto``), in the arithmetic ``precision``."""
        segmenter, problem = None, f"No checkpoint was given. {TRAIN_HINT}"
        if checkpoint is not None:
            try:
                segmenter = load(checkpoint, device=device, weights=weights, precision=precision)
                problem = None
            except Exception as err:  # noqa: BLE001 - whatever the checkpoint does, the page starts and says so
                if not isinstance(err, USER_ERRORS):
                    log.exception("loading the checkpoint %s failed", checkpoint)
                log.error("the checkpoint %s was refused: %s", checkpoint, err)
                problem = (
                    f"The checkpoint {escape_markdown(checkpoint)} was refused: {escape_markdown(err)}. {TRAIN_HINT}"
                )
        vit = (
            segmenter.backbone
            if segmenter is not None
            else FrozenViT(backbone, weights=weights or "auto", precision=precision).to(device)
        )
        return cls(segmenter, problem, vit, size)

    @property
    def readouts(self) -> list[str]:
        """The segmenter's readouts, ``head`` first."""
        if self.segmenter is None:
            return []
        return sorted(self.segmenter.readouts, key=lambda name: (name != "head", name))

    def describe(self) -> str:
        """One line on what is loaded (the page's header; plain text, the class names as the checkpoint gives them)."""
        info = self.vit.weights_info
        model = f"backbone {self.vit.model_name} ({info.source} weights), {self.vit.num_layers} blocks"
        if self.segmenter is None:
            return f"{model}; no checkpoint"
        names = ", ".join(self.segmenter.class_names)
        return f"{model}; checkpoint with {len(self.segmenter.class_names)} classes ({names})"
