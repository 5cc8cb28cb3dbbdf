"""The benchmark runs on a tiny config and ends with its JSON line (timings belong to it, not here)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_throughput_benchmark_emits_its_json(synthetic_dir):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--width", "4",
                             "--batch-models", "1,2", "--seconds", "0.05", "--warmup", "1",
                             "--data-dir", str(synthetic_dir)], capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"baseline_img_s", "best_img_s", "best_strategy", "speedup", "flops_fraction", "runs_per_hour"} <= set(summary)
    assert 0 < summary["flops_fraction"] < 1 and summary["gflop_per_image"] > 0
    assert all(r["flops_fraction"] <= 1 and r["executed_fraction"] <= 1 for r in summary["results"])
    assert summary["theoretical_peak_tflop_s"] is None or summary["theoretical_peak_tflop_s"] > 0
    assert [(r["strategy"], r["batch_models"]) for r in summary["results"]] == [
        ("baseline", 1), ("loop", 1), ("loop", 2), ("vmap", 1), ("vmap", 2)]
    assert all(r["img_s"] > 0 and r["peak_mb_per_replica"] > 0 for r in summary["results"])
    assert abs(summary["speedup"] - summary["best_img_s"] / summary["baseline_img_s"]) < 0.01
    # The seed model's last stages run at 2x2 and 1x1 pixels, where unrolled convolutions skip the padding
    baseline, *fast = summary["results"]
    assert baseline["executed_fraction"] == baseline["flops_fraction"]
    assert all(0 < r["executed_fraction"] < r["flops_fraction"] for r in fast)


def test_augment_benchmark_emits_its_json():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "augment.py"), "--batch", "32", "--replicas", "2",
                             "--repeats", "1"], capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["speedup"] > 0 and summary["cpu_path"] in summary["results"]
    ratio = summary["results"][summary["cpu_path"]] / summary["results"]["per-sample (DataLoader style), CPU"]
    assert abs(summary["speedup"] - ratio) < 0.01 * ratio


def test_gpu_probe_dry_run_runs_every_section_and_writes_its_json(tmp_path):
    """The probe's toy sizes on this machine (a CPU: its Triton kernels interpreted): every section
    runs, the file and the last line agree, and the fused update equals its reference bit for bit."""
    out = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_probe.py"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    assert list(report) == ["device", "roofline", "update", "step", "conv", "graphs", "augment_eval", "deterministic",
                            "study", "recommend"]
    assert not any(isinstance(v, str) for v in report.values()), report  # no section failed or was skipped
    assert report["update"]["bit_identical"] and report["roofline"]["copy_gb_s"] > 0
    assert [(r["conv"], r["img_s"] > 0, len(r["top_kernels"]) > 0) for r in report["step"]] == [
        ("auto", True, True), ("grouped", True, True)]
    assert report["device"]["triton"] and set(report["device"]["ptxas"]) == {"sm_80", "sm_90"}
    assert report["augment_eval"]["augment_img_s"] > 0 and report["augment_eval"]["evaluate_s"] > 0
    assert [r["runs"] for r in report["deterministic"]] == [True] * 4
    study = report["study"]
    assert study["exit"] == 0 and study["rows_landed"] and study["graphed"] and study["loop_vmap_agree"]
    assert report["recommend"]["m"] == 2 and report["recommend"]["cuda_graphs"] is False
    *layers, totals = report["conv"]
    assert totals["convs"] == 20 and len(layers) == 2  # every conv grouped by shape; a dry run times two shapes
    assert totals["convs_timed"] == sum(r["count"] for r in layers) < 20
    assert all(r["fastest"] in ("gemm", "grouped", "implicit", "vmap") for r in layers)
    assert set(totals) == {f"{form}_total_ms" for form in ("gemm", "grouped", "implicit", "vmap", "shared")} | \
        {"convs", "convs_timed"}
    assert report["graphs"]["eager_ms"] > 0


def test_update_benchmark_emits_its_json():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "update.py"), "--width", "8", "--rounds", "2"],
                            capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["dense_ms"] > 0 and summary["live_ms"] > 0
    assert summary["live_entries"] < 0.4 * summary["dense_entries"]  # the seed model's last stage, 1x1 pixels
    assert abs(summary["speedup"] - summary["dense_ms"] / summary["live_ms"]) < 0.01 * summary["speedup"]


@pytest.mark.parametrize("model", ["char-transformer", "nn-gru"])
def test_language_model_benchmark_emits_its_json(model):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "language_model.py"), "--runs", "2",
                             "--windows", "16", "--width", "8", "--repeats", "1", "--model", model],
                            capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == model
    assert set(summary["tokens_per_s"]) == {"plain loop", "fastvar loop", "fastvar vmap"}
    assert summary["ratio_to_plain"]["plain loop"] == 1 and all(v > 0 for v in summary["tokens_per_s"].values())
    assert "| fastvar vmap |" in result.stdout


def test_small_models_benchmark_emits_its_json():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "small_models.py"), "--runs", "2", "16",
                             "--repeats", "1", "--rows", "256", "--images", "64"],
                            capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(r["model"], r["runs"]) for r in summary["results"]] == [("mlp", 2), ("mlp", 16), ("cnn", 2), ("cnn", 16)]
    for r in summary["results"]:
        assert set(r["examples_per_s"]) == {"plain loop", "fastvar loop", "fastvar vmap"}
        assert r["ratio_to_plain"]["plain loop"] == 1 and all(v > 0 for v in r["examples_per_s"].values())
    cnn = summary["results"][3]
    assert cnn["goal"] == 3.0 and cnn["goal_met"] == (cnn["ratio_to_plain"]["fastvar vmap"] >= 3.0)
    assert "| cnn | 16 | fastvar vmap |" in result.stdout
