"""The benchmarks that must not rot: bench/gpu.py (run on a GPU machine) dry-run on the CPU."""

import runpy
import sys

from tests.app.helpers import ROOT


def test_the_gpu_measurement_runs_end_to_end_at_tiny_sizes_on_a_cpu(tmp_path, monkeypatch):
    out = tmp_path / "gpu.md"
    tiny = ["--device", "cpu", "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "0",
            "--depth", "18", "--precisions", "bf16-mixed", "--loop-steps", "2", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["gpu.py", *tiny])
    runpy.run_path(str(ROOT / "bench" / "gpu.py"), run_name="__main__")
    table = out.read_text()
    for row in ("ours (defaults)", "ours, nms_calls=batch", "ours, pooler=torchvision",
                "ours, channels-last", "torchvision", "2 steps, synthetic"):  # fmt: skip
        assert f"| {row} | bf16-mixed |" in table, table
