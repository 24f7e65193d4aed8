"""export.py: the checkpoint's detector as one ONNX graph, checked with onnxruntime."""

import logging
import os
from pathlib import Path

from frcnn.app.predict import find_images
from frcnn.data.sources import UNREADABLE_IMAGE
from frcnn.data.synthetic import draw_sample
from frcnn.inference.predictor import Predictor, open_image

log = logging.getLogger(__name__)

CHECK_IMAGES = 4


def export(cfg) -> Path:
    """export.py: the checkpoint's detector as an ONNX file, then the onnxruntime check (the
    same detections as PyTorch on `cfg.check_images`, batch 1 and 4). Returns the file.

    The graph is written to a temporary file beside `cfg.output` and renamed to it only once
    checked: a failed check or export leaves no unchecked file, and an older file stays."""
    require_export_extra()
    from frcnn.inference import onnx_graph as onnx_export

    opset = onnx_export.check_opset(cfg.opset)
    output = writable_file(cfg.output)
    # the graph is the detector's fixed-shape `detect`: no test-time augmentation in it, nor
    # in the PyTorch detections it is checked against
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, "cpu", cfg.score_thresh, cfg.nms_thresh, cfg.max_detections, tta="none"
    )
    images = check_images(cfg.check_images, predictor)  # a bad one fails before the export
    size, resize = predictor.transform.size, predictor.transform.resize
    info = onnx_export.metadata(size, resize, predictor.class_names, predictor.category_ids)
    log.info("Exporting to ONNX (opset %d, %d px input)...", opset, size)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        onnx_export.export_onnx(predictor.model, temporary, size, opset, info)
        batch, sizes, _ = predictor.batch(images)
        reports = onnx_export.check(temporary, predictor.model, batch, sizes)
        log.info("\n".join(check_lines(reports, len(images))))
        if not all(r["ok"] for r in reports):
            raise RuntimeError(
                f"onnxruntime's detections differ from PyTorch's beyond "
                f"{onnx_export.BOX_TOLERANCE_PX} px / {onnx_export.SCORE_TOLERANCE} (see above): "
                f"{output} was not written"
            )
        megabytes = temporary.stat().st_size / 2**20
        try:
            os.replace(temporary, output)
        except OSError as err:
            raise OSError(f"output={cfg.output!r} could not be written: {err}") from None
    finally:
        temporary.unlink(missing_ok=True)
    log.info(
        "Wrote %s (%.1f MB)\n  inputs:  images uint8 (B, 3, %d, %d) %sed, image_sizes int64 "
        "(B, 2)\n  outputs: boxes (B, K, 4), scores (B, K), labels (B, K), num_detections (B,); "
        "K = %d",
        output, megabytes, size, size, resize, predictor.model.roi_heads.detections_per_img,
    )  # fmt: skip
    return output


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


def check_lines(reports: list[dict], count: int) -> list[str]:
    """The onnxruntime check's report, a line per image and batch size."""
    lines = [f"onnxruntime (CPU) against PyTorch on {count} images:"]
    for r in reports:
        verdict = "same" if r["ok"] else "DIFFERENT"
        lines.append(
            f"  batch {r['batch']}, image {r['image']}: {r['count']} detections "
            f"(PyTorch {r['expected']}), boxes within {r['box_diff']:.1e} px, scores within "
            f"{r['score_diff']:.1e}: {verdict}"
        )
    return lines


def require_export_extra() -> None:
    """onnx and onnxruntime are the `export` extra, which training does not need: name it and
    how to install it rather than fail on the first import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            f"export.py needs onnx and onnxruntime ({err}): the `export` extra. In a checkout: "
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
