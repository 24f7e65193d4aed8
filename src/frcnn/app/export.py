"""export.py: the checkpoint's detector as one graph (an ONNX file, OpenVINO IR or an
AOTInductor package), checked against PyTorch by its runtime."""

import importlib
import logging
import os
from pathlib import Path

from frcnn.app.predict import find_images
from frcnn.data.sources import UNREADABLE_IMAGE
from frcnn.data.synthetic import draw_sample
from frcnn.inference import detector_graph
from frcnn.inference.predictor import Predictor, open_image

log = logging.getLogger(__name__)

CHECK_IMAGES = 4
# each format: its file's suffix, what runs it in the check
FORMATS = {
    "onnx": (".onnx", "onnxruntime (CPU)"),
    "openvino": (".xml", "OpenVINO (CPU)"),
    "pt2": (".pt2", "AOTInductor (CPU)"),
}


def export(cfg) -> Path:
    """export.py: the checkpoint's detector as an ONNX file (`format=onnx`), OpenVINO IR
    (`openvino`) or an AOTInductor package (`pt2`), then the check by its runtime (the same
    detections as PyTorch on `cfg.check_images`, batch 1 and 4). Returns the file.

    The files are written under temporary names beside `cfg.output` and renamed to it only
    once checked: a failed check or export leaves no unchecked file, and an older file stays."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r}: one of {', '.join(FORMATS)}")
    suffix, runtime = FORMATS[cfg.format]
    write, load = exporter(cfg)
    output = writable_file(cfg.output or f"{cfg.paths.output_dir}/model{suffix}")
    if cfg.format != "onnx" and output.suffix != suffix:  # (their loaders go by it)
        raise ValueError(f"output={cfg.output!r}: a {cfg.format} file's name ends in {suffix}")
    # the graph is the detector's fixed-shape `detect`: no test-time augmentation in it, nor
    # in the PyTorch detections it is checked against
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, "cpu", cfg.score_thresh, cfg.nms_thresh, cfg.max_detections, tta="none"
    )
    images = check_images(cfg.check_images, predictor)  # a bad one fails before the export
    size, resize = predictor.transform.size, predictor.transform.resize
    info = detector_graph.metadata(size, resize, predictor.class_names, predictor.category_ids)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp{output.suffix}")
    try:
        write(predictor.model, temporary, size, info)
        batch, sizes, _ = predictor.batch(images)
        run, _ = load(temporary)
        reports = detector_graph.check(run, predictor.model, batch, sizes)
        log.info("\n".join(check_lines(reports, len(images), runtime)))
        if not all(r["ok"] for r in reports):
            raise RuntimeError(
                f"{runtime}'s detections differ from PyTorch's beyond "
                f"{detector_graph.BOX_TOLERANCE_PX} px / {detector_graph.SCORE_TOLERANCE} (see "
                f"above): {output} was not written"
            )
        megabytes = sum(f.stat().st_size for f in written(temporary, cfg.format)) / 2**20
        pairs = zip(written(temporary, cfg.format), written(output, cfg.format), strict=True)
        try:
            for made, final in reversed(list(pairs)):  # the graph last, once its weights are in
                os.replace(made, final)
        except OSError as err:
            raise OSError(f"output={cfg.output!r} could not be written: {err}") from None
    finally:
        for made in written(temporary, cfg.format):
            made.unlink(missing_ok=True)
    log.info(
        "Wrote %s (%.1f MB)\n  inputs:  images uint8 (B, 3, %d, %d) %sed, image_sizes int64 "
        "(B, 2)\n  outputs: boxes (B, K, 4), scores (B, K), labels (B, K), num_detections (B,); "
        "K = %d",
        " + ".join(map(str, written(output, cfg.format))), megabytes, size, size, resize,
        predictor.model.roi_heads.detections_per_img,
    )  # fmt: skip
    return output


def written(path: Path, format: str) -> list[Path]:
    """The files of an export to `path`: the graph, and OpenVINO's weights beside it."""
    return [path, path.with_suffix(".bin")] if format == "openvino" else [path]


def exporter(cfg):
    """The format's (write(model, path, image_size, metadata), load(path) -> (runner,
    metadata)); a missing dependency or a bad setting is named before anything is loaded."""
    if cfg.format == "pt2":
        from frcnn.inference import pt2_package

        def write(model, path, size, info):
            log.info("Exporting with torch.export, compiling with AOTInductor (minutes)...")
            pt2_package.export_pt2(model, path, size, info)

        return write, pt2_package.load
    needs = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}[cfg.format]
    require_export_extra(f"export.py format={cfg.format}", needs)
    from frcnn.inference import onnx_graph, openvino_ir

    opset = onnx_graph.check_opset(cfg.opset)
    if cfg.format == "openvino":

        def write(model, path, size, info):
            log.info("Exporting to ONNX (opset %d), converting to OpenVINO IR...", opset)
            openvino_ir.export_openvino(model, path, size, opset, info)

        return write, openvino_ir.load

    def write(model, path, size, info):
        log.info("Exporting to ONNX (opset %d, %d px input)...", opset, size)
        onnx_graph.export_onnx(model, path, size, opset, info)

    return write, onnx_graph.load


def check_images(spec: str | None, predictor: Predictor) -> list:
    """The images the export is checked on: up to 4 of `spec` (a file, folder or glob), or 4
    synthetic ones of 240-640 px; an unreadable one is refused, named."""
    if not spec:
        num_classes = min(predictor.model.roi_heads.num_classes, 24)
        return [draw_sample(0, i, num_classes, 240, 640).image for i in range(CHECK_IMAGES)]
    images = []
    for path in find_images(spec)[:CHECK_IMAGES]:
        try:
            images.append(open_image(path))
        except UNREADABLE_IMAGE as err:
            raise ValueError(f"check_images: {path} cannot be read ({err})") from None
    return images


def check_lines(reports: list[dict], count: int, runtime: str) -> list[str]:
    """The check's report, a line per image and batch size."""
    lines = [f"{runtime} against PyTorch on {count} images:"]
    for r in reports:
        verdict = "same" if r["ok"] else "DIFFERENT"
        lines.append(
            f"  batch {r['batch']}, image {r['image']}: {r['count']} detections "
            f"(PyTorch {r['expected']}), boxes within {r['box_diff']:.1e} px, scores within "
            f"{r['score_diff']:.1e}: {verdict}"
        )
    return lines


def require_export_extra(
    what: str = "export.py format=onnx", modules: tuple[str, ...] = ("onnx", "onnxruntime")
) -> None:
    """onnx, onnxruntime and openvino are the `export` extra, which training does not need: name
    it and how to install it rather than fail on the first import."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{what} needs {' and '.join(modules)} ({err}): the `export` extra. In a checkout: "
            "`uv sync --extra export` (`uv run` installs it with the dev tools) or "
            "`pip install -e '.[export]'`"
        ) from None


def writable_file(spec: str) -> Path:
    """The path of a file to write, its folder created; a clear error where it cannot be."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"output={spec!r} is a folder: give the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"output={spec!r}: its folder {str(path.parent)!r} cannot be created ({err})"
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"output={spec!r}: no permission to write there")
    return path
