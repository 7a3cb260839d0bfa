"""One protocol: the benches' scoring of precomputed token grids gives the figures the evaluation reports."""

import pytest
import torch

import ultra
from ultra.cli import evaluate as eval_cli
from ultra.data import SyntheticScenes
from ultra.data.transforms import EvalConfig
from ultra.evaluation.protocol import format_report, score_token_grids


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


def test_the_crf_is_a_group_of_the_report_with_its_own_baseline_and_pictures(checkpoint, tmp_path):
    """With ``--crf`` every readout is scored twice, plain (``readouts``) and after the CRF (``crf.readouts``): the
    same readout names in both, each group's best baseline chosen among its own raw readouts, a table row and a
    confusion picture per refined cluster readout, and the CRF changes the predictions it refines."""
    pytest.importorskip("pydensecrf")
    ck, config = checkpoint
    args = ["--checkpoint", str(ck), "--config", str(config), "--resize", "64", "--crop", "64"]
    report = eval_cli.run([*args, "--crf", "--output", str(tmp_path / "crf")])
    plain, refined = report["readouts"], report["crf"]["readouts"]
    assert set(refined) == set(plain) and not any("+" in name for name in plain)
    raws = [name for name in refined if name.startswith("raw")]
    assert report["crf"]["best_baseline"] == {"head": max(raws, key=lambda n: refined[n]["miou"])}
    assert any(refined[n]["miou"] != plain[n]["miou"] for n in plain)
    without = eval_cli.run([*args, "--output", str(tmp_path / "plain")])
    assert without["readouts"] == plain and "crf" not in without
    for name in ("head", "raw"):
        assert (tmp_path / "crf" / f"confusion_{name}_crf.png").is_file()
    table = format_report(report)
    assert "head + k-means + CRF" in table and "head + CRF vs the best no-head baseline" in table
