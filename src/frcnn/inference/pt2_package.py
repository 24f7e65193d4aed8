"""A trained detector as a PyTorch-native package: `torch.export`, compiled by AOTInductor.

The graph is `detector_graph.DetectorGraph`, the ONNX file's: uint8 images and image sizes in,
padded detections and counts out, the batch dynamic. `torch.export` traces the detector's own
code (torchvision's `nms` stays an operator of the graph); AOTInductor compiles it to a shared
library for the CPUs of `cpu` (`CPU_TARGETS`: this machine's, or any AVX2 x86 CPU), packaged
with the weights and `metadata` into one `.pt2` file. To run it, a Python needs torch and
torchvision (whose import registers the NMS kernel), not this project:

    import torch, torchvision
    model = torch._inductor.aoti_load_package("model.pt2")
    boxes, scores, labels, num_detections = model(images, image_sizes)
    model.get_metadata()["class_names"]   # "cpu", "AOTI_CPU_ISA": what it was compiled for

Compiling needs a C++ compiler (g++ or clang), as torch.compile on a CPU does.
"""

import functools
import logging
import platform
import sys
from pathlib import Path

import torch
from packaging.version import Version
from torch import nn
from torch._inductor import cpu_vec_isa

from frcnn.inference import detector_graph
from frcnn.inference.detector_graph import INPUTS, OUTPUTS, DetectorGraph, Runner, example_inputs
from frcnn.model.poolers import level_table

MAX_BATCH = 1024  # the batch sizes the package takes: 1..MAX_BATCH
TORCH_NEEDED = (2, 15)  # the first torch this export was checked on
# export.py pt2_cpu: the CPUs the compiled code runs on -> Inductor's settings for them
CPU_TARGETS = {
    # this machine's instruction set (-march=native) and widest vectors: the fastest here, and
    # an illegal instruction on a CPU without them (an AVX-512 build on an AVX2 server)
    "native": {},
    # AVX2 and FMA, 256-bit vectors: x86-64 CPUs since about 2015 (Intel Haswell, AMD Zen)
    "x86-64-v3": {"cpp.march": "x86-64-v3", "cpp.simdlen": 256},
}


def check_cpu_target(cpu: str) -> None:
    """`pt2_cpu` names a target of `CPU_TARGETS` that this machine's compiler can build."""
    if cpu not in CPU_TARGETS:
        raise ValueError(f"pt2_cpu={cpu!r}: one of {', '.join(CPU_TARGETS)}")
    if cpu != "native" and platform.machine() not in ("x86_64", "AMD64"):
        raise ValueError(
            f"pt2_cpu={cpu}: an x86-64 target, and this machine is {platform.machine()}: "
            "pt2_cpu=native"
        )


def export_pt2(
    model: nn.Module, path: Path, image_size: int, metadata: dict[str, str], cpu: str = "native"
) -> None:
    """Export `model` and compile it for the CPUs of `cpu` (a key of `CPU_TARGETS`) into an
    AOTInductor package at `path`, `metadata` inside (its `get_metadata()`) with "cpu" (beside
    torch's "AOTI_CPU_ISA", the vector instructions used, which `load` checks).

    Compiled with Inductor's `freezing`: the weights become constants, folded into the graph and
    pre-packed for oneDNN's convolution and matrix kernels (bench/README.md: 4-13% less time
    per image than without)."""
    check_cpu_target(cpu)
    torch._inductor.aoti_compile_and_package(
        exported_program(model, image_size),
        package_path=str(path),
        inductor_configs={
            "aot_inductor.metadata": {**metadata, "cpu": cpu},
            "freezing": True,
            **CPU_TARGETS[cpu],
        },
    )


def exported_program(model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """`DetectorGraph(model)` (in eval mode, on the CPU) through `torch.export`, the batch
    dynamic (1..MAX_BATCH)."""
    if not torch_supported():
        raise RuntimeError(
            f"format=pt2 needs torch {'.'.join(map(str, TORCH_NEEDED))} or newer (the first its "
            f"export was checked on), not {torch.__version__}"
        )
    register_nms_shape()
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    forget_traced_shapes(model)
    try:
        with torch.no_grad():
            return torch.export.export(
                DetectorGraph(model),
                example_inputs(image_size),
                dynamic_shapes={name: {0: batch} for name in INPUTS},
                strict=False,
            )
    finally:
        forget_traced_shapes(model)


def torch_supported() -> bool:
    return Version(torch.__version__).release >= TORCH_NEEDED


@functools.cache
def register_nms_shape() -> None:
    """Give the tracer the shape of `torchvision.ops.nms`'s output: 0 to N kept indices.

    Replaces torchvision's (0.29), which declares at least 2 (the default of the deprecated
    `create_unbacked_symint`): an exported graph then asserts it at run time and fails on any
    image or batch with fewer than 2 candidates left, as a barely trained model's has."""

    @torch.library.register_fake("torchvision::nms")
    def nms_shape(boxes, scores, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4 and scores.dim() == 1)
        torch._check(boxes.size(0) == scores.size(0))
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty(kept, dtype=torch.long)


def forget_traced_shapes(model: nn.Module) -> None:
    """Empty the caches of shape-derived tensors (anchors, the pooler's level table): built
    while tracing, they would hold the tracer's placeholder tensors, not values."""
    model.anchor_generator._cache.clear()
    level_table.cache_clear()


def load(path: Path) -> tuple[Runner, dict[str, str]]:
    """The package loaded (CPU) -> (its runner: (images, image_sizes) -> outputs, its
    metadata). Raises, before loading its code, where this CPU lacks the package's vector
    instructions."""
    # (read from the package as torch's loader reads it, without loading the compiled library)
    with detector_graph.reading(path, "pt2"):
        metadata = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(
            str(path), "model"
        )
    check_cpu(metadata, path)
    logging.getLogger("torch.export.pt2_archive._package").addFilter(no_isa_mismatch)  # once
    with detector_graph.reading(path, "pt2"):
        package = torch._inductor.aoti_load_package(str(path))

    def run(images, image_sizes):
        with torch.no_grad():
            outputs = package(images, image_sizes)
        return {name: value.numpy() for name, value in zip(OUTPUTS, outputs, strict=True)}

    return run, package.get_metadata()


def vector_isas() -> list[str]:
    """The vector instruction sets this CPU has that Inductor compiles for, named as torch
    records a package's (`AOTI_CPU_ISA`: "AVX512", "AVX2", ...), widest first."""
    return [str(isa).upper() for isa in cpu_vec_isa.valid_vec_isa_list()]


def check_cpu(metadata: dict[str, str], path: Path) -> None:
    """Refuse a package compiled for another system or processor architecture (its library
    would not load: a loader's error about ELF headers), or whose code uses vector
    instructions this CPU lacks (running it would end the process with an illegal
    instruction, without a message)."""
    for key, here in (("AOTI_PLATFORM", sys.platform), ("AOTI_MACHINE", platform.machine())):
        there = metadata.get(key)  # torch's records of the compiling machine
        if there and there != here:
            raise RuntimeError(
                f"{path} was compiled for {there} ({key}), and this machine is {here}: export "
                "it on a machine of the kind that runs it"
            )
    isa = metadata.get("AOTI_CPU_ISA")
    here = vector_isas()
    scalar = str(cpu_vec_isa.invalid_vec_isa).upper()  # (compiled without vector code)
    if isa and isa != scalar and isa not in here:
        raise RuntimeError(
            f"{path} was compiled for CPUs with {isa} (export.py pt2_cpu="
            f"{metadata.get('cpu', 'native')}), which this one lacks (it has "
            f"{', '.join(here) or 'none of the vector instructions Inductor uses'}): export "
            "it on this machine, or with pt2_cpu=x86-64-v3 for any AVX2 x86 CPU"
        )


def no_isa_mismatch(record: logging.LogRecord) -> bool:
    """torch's loader warns of a "mismatch" whenever a package's vector instructions are not
    this CPU's widest, also where this CPU has them (`check_cpu` refuses the others)."""
    return "AOTI_CPU_ISA" not in record.getMessage()
