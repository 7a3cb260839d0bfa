"""``train.py`` / ``ultra-train``: train the head, fit the readouts, evaluate, export the inference checkpoint.

    python train.py --config configs/demo.yaml [--data.num_workers 4]
    python train.py --config configs/camvid.yaml --seeds 0,1,2     # one run per seed, then mean +- std
    python train.py --config configs/cocostuff27.yaml --config configs/backbones/dino_vits8.yaml

The parser is :mod:`ultra.training.config` (``--help`` lists every option); the run is
:func:`ultra.training.pipeline.train`.
"""

from __future__ import annotations

from ..training.pipeline import train as run
from . import console

main = console(run, "ultra-train")
