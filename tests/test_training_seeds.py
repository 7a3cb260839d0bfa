"""Seeds under control: a run is a pure function of its config and seed; --seeds reports mean and std over seeds."""

import json
import statistics

import pytest
from helpers import HEAD_MODULES, synthetic_config, tiny_overrides

from ultra.cli import train as train_cli
from ultra.errors import ConfigError
from ultra.evaluation.seeds import format_summary, summarize
from ultra.training.config import split_seeds_argument


def test_seeds_argument_is_parsed_and_checked():
    assert split_seeds_argument(["--config", "c.yaml", "--seeds", "0,1,2"]) == ([0, 1, 2], ["--config", "c.yaml"])
    assert split_seeds_argument(["--seeds=3,5"]) == ([3, 5], [])
    assert split_seeds_argument(["--config", "c.yaml"]) == (None, ["--config", "c.yaml"])
    for bad, message in (
        (["--seeds", "a,b"], "comma-separated integers"),
        (["--seeds", "1,1"], "distinct"),
        (["--seeds"], "needs a comma-separated list"),
        (["--seeds", "1", "--seed_everything", "2"], "exclude each other"),
        (["--seeds", "0,-1"], r"must lie in 0 .. 2\*\*32 - 1 .*-1 does not"),
        (["--seeds", "4294967296"], "4294967296 does not"),
    ):
        with pytest.raises(ValueError, match=message):
            split_seeds_argument(bad)


@pytest.mark.parametrize("solver", ["exact", "sgd"])
def test_two_runs_in_one_process_print_the_same_figures(tmp_path, solver):
    config = synthetic_config(tmp_path / "c.yaml")
    reports = []
    for run in ("first", "second"):  # the first builds the cache and graphs, the second reuses them
        args = [
            "--config",
            str(config),
            *tiny_overrides(tmp_path / run),
            "--data.cache.dir",
            str(tmp_path / "cache"),
            "--model",
            HEAD_MODULES[solver],
        ]
        reports.append(train_cli.run(args))
    assert reports[0]["readouts"] == reports[1]["readouts"]


def test_seeds_run_once_each_and_report_mean_and_std(tmp_path):
    config = synthetic_config(tmp_path / "c.yaml")
    summary = train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--seeds", "0,1,2"])
    root = tmp_path / "run"
    assert json.loads((root / "seeds.json").read_text()) == summary
    per_seed = [json.loads((root / f"seed-{s}" / "eval" / "eval.json").read_text()) for s in (0, 1, 2)]
    assert [r["settings"]["seed"] for r in per_seed] == [0, 1, 2]
    for name in ("head", "raw", "probe"):
        values = [r["readouts"][name]["miou"] for r in per_seed]
        assert summary["readouts"][name]["miou"]["values"] == values
        assert summary["readouts"][name]["miou"]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["readouts"][name]["miou"]["std"] == pytest.approx(statistics.stdev(values))
    assert (root / "seed-1" / "model.safetensors").is_file()
    assert len({r["readouts"]["head"]["miou"] for r in per_seed} | {r["readouts"]["raw"]["miou"] for r in per_seed}) > 1
    best = max(("raw", "raw_centred", "raw_whitened"), key=lambda n: summary["readouts"][n]["miou"]["mean"])
    assert summary["best_baseline"] == {"head": best}
    gain = summary["readouts"]["head"]["miou"]["mean"] - summary["readouts"][best]["miou"]["mean"]
    assert f"head vs the best no-head baseline ({best}): {100 * gain:+.1f} mIoU" in format_summary(summary)


def test_one_seed_has_no_standard_deviation():
    figures = {"miou": 0.25, "acc": 0.5, "miou_present": 0.3}
    report = {"readouts": {"head": figures, "raw": figures}, "settings": {"seed": 3, "timings": {"fit_s": 1.0}}}
    summary = summarize({3: report})
    assert summary["readouts"]["head"]["miou"] == {"mean": 0.25, "std": None, "values": [0.25]}
    table = format_summary(summary)
    assert "±" not in table and "one seed: no standard deviation" in table
    assert "±" in format_summary(summarize({3: report, 4: report}))


def test_the_crf_group_is_summarised_on_its_own():
    """Seeds with a CRF group: its readouts get their own mean and deviation, and its own best baseline (here another
    raw readout than the plain group's), both in the table."""

    def figures(miou):
        return {"miou": miou, "acc": 0.5, "miou_present": miou}

    reports = {
        seed: {
            "readouts": {"head": figures(0.3 + d), "raw": figures(0.2), "raw_whitened": figures(0.1)},
            "crf": {"readouts": {"head": figures(0.4 + d), "raw": figures(0.1), "raw_whitened": figures(0.25)}},
            "settings": {"seed": seed, "timings": {}},
        }
        for seed, d in ((0, 0.0), (1, 0.02))
    }
    summary = summarize(reports)
    assert summary["best_baseline"] == {"head": "raw"}
    assert summary["crf"]["best_baseline"] == {"head": "raw_whitened"}
    assert summary["crf"]["readouts"]["head"]["miou"]["mean"] == pytest.approx(0.41)
    table = format_summary(summary)
    assert "head + k-means + CRF" in table
    assert "head + CRF vs the best no-head baseline (raw_whitened + CRF): +16.0 mIoU" in table


def test_every_seed_folder_is_checked_before_the_first_seed_starts(tmp_path):
    """A seed folder holding a run with other settings is refused before any seed runs, not when its turn comes."""
    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]
    root = tmp_path / "run"
    seed_one = ["--seed_everything", "1", "--trainer.default_root_dir", str(root / "seed-1")]
    train_cli.run([*args, *seed_one, "--model.out_dim", "6"])
    with pytest.raises(ConfigError, match=r"seed-1 holds a run with other settings: .*out_dim \(6 there, 8 now\)"):
        train_cli.run([*args, "--seeds", "0,1"])
    assert not (root / "seed-0").exists()  # nothing ran
