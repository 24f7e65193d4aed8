"""export.py: the checkpoint's detector as one ONNX graph, checked with onnxruntime."""

import logging
import os
from pathlib import Path

from frcnn.app.predict import find_images
from frcnn.data.synthetic import draw_sample
from frcnn.predict import Predictor, open_image

log = logging.getLogger(__name__)

CHECK_IMAGES = 4


def export(cfg) -> Path:
    """export.py: the checkpoint's detector as an ONNX file, then the onnxruntime check (the
    same detections as PyTorch on `cfg.check_images`, batch 1 and 4). Returns the file."""
    require_export_extra()
    from frcnn import export as onnx_export

    opset = onnx_export.check_opset(cfg.opset)
    output = writable_file(cfg.output)
    # the graph is the detector's fixed-shape `detect`: no test-time augmentation in it, nor
    # in the PyTorch detections it is checked against
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, "cpu", cfg.score_thresh, cfg.nms_thresh, cfg.max_detections, tta="none"
    )
    size, resize = predictor.transform.size, predictor.transform.resize
    info = onnx_export.metadata(size, resize, predictor.class_names, predictor.category_ids)
    log.info("Exporting to ONNX (opset %d, %d px input)...", opset, size)
    onnx_export.export_onnx(predictor.model, output, size, opset, info)

    if cfg.check_images:
        images = [open_image(path) for path in find_images(cfg.check_images)[:CHECK_IMAGES]]
    else:
        num_classes = min(predictor.model.roi_heads.num_classes, 24)
        images = [draw_sample(0, i, num_classes, 240, 640).image for i in range(CHECK_IMAGES)]
    batch, sizes, _ = predictor.batch(images)
    reports = onnx_export.check(output, predictor.model, batch, sizes)
    lines = [f"onnxruntime (CPU) against PyTorch on {len(images)} images:"]
    for r in reports:
        verdict = "same" if r["ok"] else "DIFFERENT"
        lines.append(
            f"  batch {r['batch']}, image {r['image']}: {r['count']} detections "
            f"(PyTorch {r['expected']}), boxes within {r['box_diff']:.1e} px, scores within "
            f"{r['score_diff']:.1e}: {verdict}"
        )
    megabytes = output.stat().st_size / 2**20
    lines.append(f"Wrote {output} ({megabytes:.1f} MB)")
    lines.append(
        f"  inputs:  images uint8 (B, 3, {size}, {size}) {resize}ed, image_sizes int64 (B, 2)"
    )
    lines.append(
        "  outputs: boxes (B, K, 4), scores (B, K), labels (B, K), num_detections (B,); "
        f"K = {predictor.model.roi_heads.detections_per_img}"
    )
    log.info("\n".join(lines))
    if not all(r["ok"] for r in reports):
        raise RuntimeError(
            f"{output}: onnxruntime's detections differ from PyTorch's beyond "
            f"{onnx_export.BOX_TOLERANCE_PX} px / {onnx_export.SCORE_TOLERANCE} (see above)"
        )
    return output


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
