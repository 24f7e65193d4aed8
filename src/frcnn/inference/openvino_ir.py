"""A trained detector in OpenVINO's format (IR: `model.xml`, the graph, and `model.bin`, the
weights), converted from the ONNX file's graph.

OpenVINO reads the ONNX graph as it is (its `NonMaxSuppression` and `RoiAlign` are OpenVINO
operations too): `export_openvino` writes the ONNX file to a temporary one, converts it with
`openvino.convert_model` (without its telemetry: `no_telemetry`) and saves the IR with the
metadata in its runtime info (section "frcnn"). `load` compiles it for the CPU in float32 (on
CPUs with AMX or AVX-512 BF16, OpenVINO's default would run it in bfloat16: faster, but no
longer the PyTorch detections the check asks for).

Needs the `export` extra (`openvino`, and `onnx` for the conversion).
"""

import contextlib
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from frcnn.inference.detector_graph import OUTPUTS, Runner, reading
from frcnn.inference.onnx_graph import export_onnx

SECTION = "frcnn"  # the runtime-info section that holds the metadata


def export_openvino(
    model: nn.Module, path: Path, image_size: int, opset: int, metadata: dict[str, str]
) -> None:
    """`model` as OpenVINO IR at `path` (.xml; the weights beside it, .bin), `metadata` in its
    runtime info."""
    onnx_file = path.with_suffix(".onnx")
    try:
        export_onnx(model, onnx_file, image_size, opset, metadata)
        convert(onnx_file, path, metadata)
    finally:
        onnx_file.unlink(missing_ok=True)


def convert(onnx_file: Path, path: Path, metadata: dict[str, str]) -> None:
    """An ONNX file (float or int8 QDQ) as OpenVINO IR at `path` (.xml, .bin beside it), with
    `metadata` in its runtime info."""
    import openvino

    with no_telemetry():
        converted = openvino.convert_model(str(onnx_file))
    for key, value in metadata.items():
        converted.set_rt_info(value, [SECTION, key])
    openvino.save_model(converted, str(path), compress_to_fp16=False)


@contextlib.contextmanager
def no_telemetry():
    """OpenVINO's converter without its usage statistics. `convert_model` sends events to Google
    Analytics (with a client id it keeps in ~/intel) unless the user has opted out with
    `opt_in_out --opt_out`, from a forked process it waits up to 3 s for: an export must not
    report on its user, and offline every conversion waited. For the call, the converter takes
    the stand-in it uses where `openvino_telemetry` is not installed (`telemetry_stub`)."""
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

    modules = [module for module in (convert_impl, telemetry_utils) if hasattr(module, "tm")]
    saved = [module.tm for module in modules]
    for module in modules:
        module.tm = telemetry_stub
    try:
        yield
    finally:
        for module, tm in zip(modules, saved, strict=True):
            module.tm = tm


def load(path: Path) -> tuple[Runner, dict[str, str]]:
    """The IR compiled for the CPU in float32 -> (its runner: (images, image_sizes) -> outputs,
    its metadata)."""
    import openvino

    with reading(path, "openvino"):
        model = openvino.Core().read_model(str(path))
        metadata = {key: value.astype(str) for key, value in model.get_rt_info()[SECTION].items()}
    compiled = openvino.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(images: Tensor, image_sizes: Tensor) -> dict[str, np.ndarray]:
        outputs = compiled({"images": images.numpy(), "image_sizes": image_sizes.numpy()})
        return {name: outputs[compiled.output(name)] for name in OUTPUTS}

    return run, metadata
