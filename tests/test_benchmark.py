"""The benchmark's plumbing (scripts/benchmark.py, scripts/bench/): phase selection, the memory slope, the targets
and the JSON a run assembles, with every measurement replaced by a stand-in. Nothing is timed here: the figures
themselves come from a run on a quiet machine (docs/performance.md)."""

import argparse
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import benchmark  # noqa: E402
from bench import common  # noqa: E402


def test_the_slope_is_megabytes_per_thousand_images():
    assert common.rss_slope({1000: 900.0, 3000: 960.0, 6000: 1050.0}) == pytest.approx(30.0, abs=0.5)
    assert common.rss_slope({1000: 800.0, 5000: 800.0}) == 0.0  # flat memory
    assert common.rss_slope({1000: 700.0, 3000: 1700.0}) == pytest.approx(500.0)  # the whole split held at once
    assert common.rss_slope({1000: 700.0}) is None


def test_phases_are_selected_in_order_and_unknown_names_refused():
    phases = benchmark.PHASES
    assert common.select_phases(phases, None, None) == list(phases)
    assert common.select_phases(phases, "cold,caption", None) == ["caption", "cold"]
    assert "train" not in common.select_phases(phases, None, "train,train_rss")
    with pytest.raises(ValueError, match="colds"):
        common.select_phases(phases, "colds", None)


def test_targets_pass_fail_and_unmeasured():
    report = {"cli_cold_s": 1.2, "caption_images_per_s": 50.0, "first_run_s": None}
    targets = benchmark.check_targets(report)
    assert targets["cli_cold_s"] == {"value": 1.2, "target": "<= 1.5", "pass": True}
    assert targets["caption_images_per_s"]["pass"] is False
    assert targets["first_run_s"]["pass"] is None and targets["train_mfu"]["value"] is None
    assert set(targets) >= {"cli_caption_images_per_s", "peak_rss_mb", "train_rss_slope_mb_per_1000",
                            "caption_rss_slope_mb_per_1000"}


FAKE = {  # what each phase's measurement returns, standing in for the real ones
    "first_run": {"first_run_s": 9.0},
    "caption": {"caption_images_per_s": 60.0, "guided_images_per_s": 60.0, "plain_images_per_s": 70.0},
    "cli": {"cli_caption_images_per_s": 45.0, "cli_plain_images_per_s": 50.0},
    "cold": {"cli_cold_s": 1.4},
    "train_rss": {"peak_rss_mb_train_cold": 1500.0, "train_rss_slope_mb_per_1000": 12.0},
    "caption_rss": {"peak_rss_mb_caption": 1100.0, "caption_rss_slope_mb_per_1000": 3.0},
}


def test_one_run_assembles_every_figure_of_the_targets(monkeypatch, tmp_path):
    calls = []

    def fake(name):
        def measure(*args, **kwargs):
            calls.append(name)
            return FAKE.get(name, {})
        return measure

    for name, function in [("first_run", "measure_first_run"), ("caption", "measure_caption"), ("cli", "measure_cli"),
                           ("cold", "measure_cold_start"), ("train_rss", "measure_train_rss"),
                           ("caption_rss", "measure_caption_rss"), ("train", "measure_training"),
                           ("encoder", "encoder_figures"), ("imports", "measure_imports")]:
        monkeypatch.setattr(benchmark, function, fake(name))
    monkeypatch.setattr(benchmark, "matmul_gflops", lambda n, repeats: 123.0)
    monkeypatch.setattr(benchmark, "ensure_export", lambda *a: calls.append("export"))
    monkeypatch.setattr(benchmark, "compile_bytecode", lambda: True)
    data = tmp_path / "flickr"
    (data / "splits").mkdir(parents=True)
    (data / "splits" / "val.txt").write_text("a.jpg\nb.jpg\n")
    args = benchmark.get_args_parser().parse_args(["--data", str(data), "--skip", "train,encoder,imports",
                                                   "--caption-rss-dir", str(tmp_path)])
    benchmark.fill_defaults(args)
    phases = common.select_phases(benchmark.PHASES, args.only, args.skip)
    report = benchmark.build_report(args, phases)
    assert calls == ["first_run", "caption", "cli", "cold", "train_rss", "caption_rss"]  # in order, no extra export
    assert report["matmul_gflops"] == 123.0 and report["machine"]["backend"] == "auto"
    assert report["peak_rss_mb"] == 1500.0  # the largest peak measured
    assert all(report["targets"][k]["pass"] for k in ("caption_images_per_s", "cli_caption_images_per_s",
                                                      "cli_cold_s", "first_run_s", "peak_rss_mb",
                                                      "train_rss_slope_mb_per_1000", "caption_rss_slope_mb_per_1000"))
    assert report["errors"] == {}
    json.dumps(report)  # the report is JSON as it stands


def test_without_a_first_run_the_export_is_made_once_before_the_first_phase_needing_it(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(benchmark, "ensure_export", lambda *a: calls.append("export"))
    monkeypatch.setattr(benchmark, "run_phase", lambda name, *a: calls.append(name))
    monkeypatch.setattr(benchmark, "compile_bytecode", lambda: True)
    data = tmp_path / "flickr"
    (data / "splits").mkdir(parents=True)
    (data / "splits" / "val.txt").write_text("a.jpg\n")
    args = argparse.Namespace(threads=1, backend="auto", data=data, quick=True, compile=False)
    benchmark.build_report(args, ["matmul", "caption", "cold"])
    assert calls == ["matmul", "export", "caption", "cold"]
    calls.clear()
    benchmark.build_report(argparse.Namespace(**{**vars(args), "backend": "torch"}), ["caption"])
    assert calls == ["caption"]  # the PyTorch backend needs no export


def test_the_sizes_option_and_the_defaults():
    args = benchmark.get_args_parser().parse_args(["--train-rss-sizes", "3000,1000", "--quick"])
    benchmark.fill_defaults(args)
    assert args.train_rss_sizes == [1000, 3000] and args.caption_rss_sizes == [8, 16]
    full = benchmark.get_args_parser().parse_args([])
    benchmark.fill_defaults(full)
    assert full.train_rss_sizes == [1000, 3000, 6000] and full.caption_rss_sizes == [1000, 5000]
    assert full.cli_images == 500 and full.cold_repeats == 5 and full.backend == "auto"
    with pytest.raises(SystemExit):
        benchmark.get_args_parser().parse_args(["--train-rss-sizes", "0,x"])
