"""One protocol: the benches' scoring of precomputed token grids gives the figures the evaluation reports."""

import pytest
import torch

import ultra
from ultra.data import SyntheticScenes
from ultra.data.transforms import EvalConfig
from ultra.evaluation.protocol import score_token_grids


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scoring_precomputed_grids_gives_the_evaluation_s_figures(trained, dtype):
    """The shared run's report against ``score_token_grids`` on the same images, readouts and geometry: the same
    mIoU and accuracy for every readout (the grids kept in float16, as the ablation's caches may, within 0.5 points)."""
    root, _, report = trained
    segmenter = ultra.load(root / "run" / "model.safetensors")
    val = SyntheticScenes(5, 96, 4, seed=1, transform=EvalConfig(64, 64).transform())  # tiny_overrides' protocol
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    keys = sorted({tuple(k) for readout in segmenter.readouts.values() for k in readout.keys})
    grids = segmenter.backbone.collect_grids([images], keys, dtype=dtype)
    tolerance = 1e-6 if dtype == torch.float32 else 5e-3
    for name, readout in segmenter.readouts.items():
        figures = score_token_grids(readout, grids, labels, len(segmenter.class_names))
        assert figures["miou"] == pytest.approx(report["readouts"][name]["miou"], abs=tolerance), name
        assert figures["acc"] == pytest.approx(report["readouts"][name]["acc"], abs=tolerance), name
