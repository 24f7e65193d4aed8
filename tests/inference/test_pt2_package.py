"""torch.export of the detector graph (what `export.py format=pt2` compiles): the same outputs as
the eager graph on any batch size, also where nothing is detected; the eager model unchanged."""

import platform
import sys
from pathlib import Path

import pytest
import torch

from frcnn.inference.detector_graph import DetectorGraph
from frcnn.inference.pt2_package import (
    TORCH_NEEDED,
    check_cpu,
    check_cpu_target,
    exported_program,
    torch_supported,
    vector_isas,
)
from tests.inference.helpers import small_detector

SIZE = 64
pytestmark = pytest.mark.skipif(
    not torch_supported(), reason=f"format=pt2 needs torch {TORCH_NEEDED} or newer"
)


def batch(count: int):
    images = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8)
    sizes = torch.tensor([[SIZE, SIZE - 8 * i] for i in range(count)])
    return images, sizes


@pytest.mark.parametrize("score_thresh", [0.0, 0.99])
def test_the_exported_graph_gives_the_eager_graphs_outputs_on_any_batch(score_thresh):
    """0.99: no candidate is left for the last NMS (torchvision's shape function of `nms`
    declares at least 2 kept boxes, which the graph would assert at run time)."""
    model = small_detector(score_thresh)
    torch.manual_seed(1)
    inputs = {count: batch(count) for count in (1, 3)}
    with torch.no_grad():
        before = {count: DetectorGraph(model)(*x) for count, x in inputs.items()}
    program = exported_program(model, SIZE).module()
    for count, x in inputs.items():
        with torch.no_grad():
            traced, eager = program(*x), DetectorGraph(model)(*x)
        counts = eager[3]
        assert (counts > 0).all() if score_thresh == 0 else (counts == 0).all()
        for a, b, c in zip(traced, eager, before[count], strict=True):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(b, c)  # the eager model as it was before the export


def test_a_package_for_another_system_or_cpu_is_refused_before_its_code_loads():
    """Vector instructions this CPU lacks (an AVX-512 build on an AVX2 CPU) would end the
    process with an illegal instruction, without a message; another architecture's or
    system's library would not load."""
    arm = platform.machine() in ("aarch64", "arm64")
    foreign = "AVX2" if arm else "ASIMD"  # another architecture's
    with pytest.raises(
        RuntimeError,
        match=rf"m\.pt2 was compiled for CPUs with {foreign} \(export.py pt2_cpu=native\), "
        r"which this one lacks .*export it on this machine, or with pt2_cpu=x86-64-v3",
    ):
        check_cpu({"AOTI_CPU_ISA": foreign}, Path("m.pt2"))
    for isa in vector_isas():  # this CPU's, its widest and the narrower ones
        check_cpu({"AOTI_CPU_ISA": isa, "cpu": "x86-64-v3"}, Path("m.pt2"))
    check_cpu({"AOTI_CPU_ISA": "INVALID_VEC_ISA"}, Path("m.pt2"))  # no vector code
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    with pytest.raises(RuntimeError, match=rf"compiled for {other} \(AOTI_MACHINE\), and this"):
        check_cpu({"AOTI_MACHINE": other}, Path("m.pt2"))
    system = "win32" if sys.platform != "win32" else "linux"
    with pytest.raises(RuntimeError, match=rf"compiled for {system} \(AOTI_PLATFORM\)"):
        check_cpu({"AOTI_PLATFORM": system}, Path("m.pt2"))
    here = {"AOTI_PLATFORM": sys.platform, "AOTI_MACHINE": platform.machine()}
    check_cpu(here, Path("m.pt2"))
    check_cpu({}, Path("m.pt2"))  # (no record: nothing to check)


def test_a_cpu_target_is_one_of_the_known_ones():
    check_cpu_target("native")
    with pytest.raises(ValueError, match=r"pt2_cpu='haswell': one of native, x86-64-v3"):
        check_cpu_target("haswell")
