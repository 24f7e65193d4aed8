"""The benchmarks that must not rot: bench/gpu.py (run on a GPU machine), the stage breakdown and
the ONNX latency, dry-run on the CPU at tiny sizes."""

import re
import runpy
import subprocess
import sys

import pytest
import torch

from tests.app.helpers import ROOT
from tests.inference.helpers import one_detection_short


def test_the_gpu_measurement_runs_end_to_end_at_tiny_sizes_on_a_cpu(tmp_path, monkeypatch):
    """In float32: on a CPU without bfloat16 instructions (AVX2's) PyTorch's bfloat16 matrix
    products take a fallback some 200x slower than float32's, and the box head's at full width
    made this dry run 5 minutes long (the autocast of each precision: the test below)."""
    out = tmp_path / "gpu.md"
    tiny = ["--device", "cpu", "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "0",
            "--depth", "18", "--precisions", "32-true", "--loop-steps", "2", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["gpu.py", *tiny])
    runpy.run_path(str(ROOT / "bench" / "gpu.py"), run_name="__main__")
    table = out.read_text()
    for row in ("ours, nms_calls=image", "ours, nms_calls=batch", "ours, nms_calls=triton",
                "ours, pooler=torchvision", "ours, channels-last", "torchvision",
                "2 steps, synthetic, nms_calls=triton"):  # fmt: skip
        assert f"| {row} | 32-true |" in table, table


def test_the_benches_take_train_py_s_precision_names_each_with_its_autocast():
    """bench/detector.py and bench/gpu.py name precisions as conf/precision/ does (gpu.py hands
    its own to train.py), and each runs under its own dtype (`32-true` was read as bfloat16
    when the benches called float32 `32`)."""
    bench = runpy.run_path(str(ROOT / "bench" / "detector.py"))
    names = {path.stem for path in (ROOT / "conf" / "precision").glob("*.yaml")}
    assert set(bench["AUTOCAST_DTYPES"]) == names
    cpu = torch.device("cpu")
    dtypes = {}
    for precision in names:
        with bench["autocast"](cpu, precision):
            dtypes[precision] = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    assert dtypes == {"32-true": torch.float32, "16-mixed": torch.float16,
                      "bf16-mixed": torch.bfloat16}  # fmt: skip


def test_the_gpu_evaluation_trains_the_demo_and_evaluates_it_at_tiny_sizes_on_a_cpu(
    tmp_path, monkeypatch
):
    out = tmp_path / "gpu-eval.md"
    tiny = ["data.train.num_images=4", "data.val.num_images=2", "data.batch_size=2",
            "data.image_size=64", "trainer.max_epochs=1", "report=false"]  # fmt: skip
    argv = ["--images", "3", "--precisions", "32-true", "--train", *tiny, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["gpu_eval.py", *argv])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "bench" / "gpu_eval.py"), run_name="__main__")
    table = out.read_text()
    assert re.search(r"\(the demo\): \d+ s, val/map \d\.\d{4}", table), table
    assert re.search(r"\| precision=32-true \| \d\.\d{4} \| \+0\.0000 \|", table), table


def test_the_stage_breakdown_s_rest_is_what_the_stages_leave(capsys, monkeypatch):
    """bench/detector.py --breakdown: the "(the rest)" row is the step less its stages."""
    tiny = ["--breakdown", "--device", "cpu", "--sizes", "64", "--batch-size", "1", "--reps", "1",
            "--warmup", "0"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["detector.py", *tiny])
    runpy.run_path(str(ROOT / "bench" / "detector.py"), run_name="__main__")
    printed = capsys.readouterr().out
    for phase in ("train step", "inference"):
        block = printed.split(f"\n{phase}: ")[1].split("\n\n")[0]
        whole = float(block.split(" s")[0])
        rows = [line.split(" | ") for line in block.splitlines() if line.startswith("| ")][2:]
        stages = sum(float(row[1]) for row in rows[:-1])
        assert rows[-1][0] == "| (the rest: backward, optimiser, ...)", block
        # every figure is printed to 4 decimals: each one read back is off by up to 5e-5
        rounding = 5e-5 * (len(rows) + 1)
        assert float(rows[-1][1]) == pytest.approx(whole - stages, abs=rounding + 1e-9), block
        assert 0 <= float(rows[-1][1]) < whole


def test_the_cpu_inference_bench_checks_and_times_every_backend(capsys, monkeypatch):
    """bench/cpu_inference.py on its small stand-in (pt2 left out: compiling takes minutes):
    the float backends checked equal to PyTorch on detections (not on none), a row per batch
    size with every backend's time and its ratio to torchvision's, then the same rows in
    GFLOP/s."""
    backends = ["torchvision", "torch", "onnxruntime", "openvino", "int8 onnxruntime"]
    tiny = ["--depth", "18", "--sizes", "64", "--batch-sizes", "1", "2", "--reps", "1"]
    argv = ["cpu_inference.py", *tiny, "--noise-seeds", "1", "--backends", *backends]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "bench" / "cpu_inference.py"), run_name="__main__")
    printed = capsys.readouterr().out
    # the noise line counts the detections that every check compares
    assert int(re.search(r"seed 0: (\d+) detections", printed).group(1)) > 0, printed
    for backend in ("onnxruntime", "openvino"):
        same = re.search(rf"^64 px, {backend}: the same detections as PyTorch: (\w+)$", printed,
                         re.M)  # fmt: skip
        # random weights leave decisions near the cuts: a differing one passes only where
        # PyTorch itself, its weights moved by float32's noise, flips it too (as export.py)
        rounding = f"64 px, {backend}: PyTorch itself detects otherwise on "
        assert same and (same[1] == "True" or rounding in printed), printed
    rows = [line for line in printed.splitlines() if line.startswith(("| 64 | 1 |", "| 64 | 2 |"))]
    assert len(rows) == 4, printed
    for row in rows[:2]:
        assert row.count("x)") == len(backends) and "(1.00x)" in row.split(" | ")[2], row
    for row in rows[2:]:
        rates = [float(cell) for cell in row.strip("| ").split(" | ")[2:]]
        assert len(rates) == len(backends) and min(rates) > 0, row


def test_a_backend_that_differs_gets_the_exports_float32_verdict(capsys, monkeypatch):
    """A runtime one detection short (OpenVINO's, made so underneath the bench): the check
    fails and names the image, and export.py's float32 verdict on it follows (its wording for
    either outcome is tested in tests/app/test_export.py; which one a random model's image
    gets depends on how near its cuts lie: the runtime's, on the machines seen)."""
    from frcnn.inference import openvino_ir

    monkeypatch.setattr(openvino_ir, "load", one_detection_short(openvino_ir.load))
    tiny = ["--depth", "18", "--sizes", "64", "--batch-sizes", "1", "--reps", "1"]
    argv = ["cpu_inference.py", *tiny, "--noise-seeds", "0", "--backends", "torch", "openvino"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "bench" / "cpu_inference.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "64 px, openvino: the same detections as PyTorch: False" in printed, printed
    assert re.search(r"^  batch 1, image 0: .*: DIFFERENT$", printed, re.M), printed
    verdict = (
        r"^64 px, openvino: PyTorch (itself detects otherwise|with its weights moved by one part "
        r"in a million detects the same) on image 0 \(batch 1\)"
    )
    assert re.search(verdict, printed, re.M), printed


def test_the_cpu_inference_bench_measures_each_backends_map_on_a_checkpoints_data(
    trained, capsys, monkeypatch
):
    """--checkpoint: the float32 noise lines on export.py's check images, then a row per
    backend with its mAP on the checkpoint's validation data; the float backends (the same
    detections) agree. (OpenVINO's int8 runs in tests/app/test_export in a process of its own:
    in this one it leaves the process to crash at a later test.)"""
    checkpoint = trained[1] / "checkpoints" / "last.ckpt"
    backends = ["torch", "onnxruntime", "openvino", "int8 onnxruntime"]
    argv = ["cpu_inference.py", "--checkpoint", str(checkpoint), "--backends", *backends,
            "--noise-seeds", "2"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "bench" / "cpu_inference.py"), run_name="__main__")
    printed = capsys.readouterr().out
    noise = re.findall(r"^96 px, export.py's check images, .* seed (\d): (\d+) detections", printed,
                       re.M)  # fmt: skip
    assert [seed for seed, _ in noise] == ["0", "1"] and int(noise[0][1]) > 0, printed
    assert "96 px, 8 validation images" in printed, printed
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in printed.splitlines()
            if line.startswith("| ") and not line.startswith(("| backend", "| ---"))}  # fmt: skip
    assert list(rows) == backends, printed
    maps = {name: float(cells[0]) for name, cells in rows.items()}
    assert maps["onnxruntime"] == pytest.approx(maps["torch"], abs=1e-3), printed
    assert maps["openvino"] == pytest.approx(maps["torch"], abs=1e-3), printed
    assert 0 <= maps["int8 onnxruntime"] <= 1


def test_float32_noise_moves_a_detectors_results_within_the_export_checks_tolerances(trained):
    """The bench's noise line: PyTorch against itself with its weights moved by one part in a
    million detects the same (the check passes) but not bit for bit (boxes move)."""
    from frcnn.data.synthetic import draw_sample
    from frcnn.inference.predictor import Predictor

    bench = runpy.run_path(str(ROOT / "bench" / "cpu_inference.py"))
    predictor = Predictor.from_checkpoint(trained[1] / "checkpoints" / "last.ckpt", "cpu")
    photos = [draw_sample(1, i, 6, 240, 640).image for i in range(2)]
    images, sizes, _ = predictor.batch(photos)
    with torch.no_grad():
        lines = bench["float_noise"](predictor.model, images, sizes, seeds=2)
    assert len(lines) == 2
    for line in lines:
        found = re.search(r"(\d+) detections, boxes within ([\d.e+-]+) px, .*passes: (\w+)", line)
        assert int(found.group(1)) > 0 and float(found.group(2)) > 0, line
        assert found.group(3) == "True", line


def test_the_coco_json_memory_bench_runs_at_tiny_sizes():
    # in a process of its own, as it is run: it forks, and a fork of a test process holds the
    # state of every earlier test (one that had run OpenVINO's int8 graph was taken down)
    bench = [sys.executable, str(ROOT / "bench" / "coco_json_memory.py")]
    ran = subprocess.run(
        [*bench, "--images", "20", "--annotations", "60"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    printed = ran.stdout
    for row in ("the parsed file", "`COCOFolder`"):
        assert re.search(rf"\| {re.escape(row)} \| [\d.]+ \| -?\d+ \| -?\d+ \|", printed), printed
