"""export.py: the checkpoint's detector as one graph (an ONNX file, OpenVINO IR or an
AOTInductor package), checked against PyTorch by its runtime."""

import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from frcnn.app.build import checkpoint_run_config, quiet_libraries, require_extra
from frcnn.app.evaluate import by_name
from frcnn.app.predict import find_images
from frcnn.checks import check_number, path_of
from frcnn.data.sources import UNREADABLE_IMAGE, unreadable
from frcnn.data.synthetic import draw_sample
from frcnn.inference import detector_graph
from frcnn.inference.predictor import Predictor, open_image, per_image
from frcnn.structures import counted
from frcnn.training.checkpoint import load_checkpoint

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
    detections as PyTorch on `cfg.check_images`, batch 1 and 4). With `quantize=int8` (onnx,
    openvino) the checked float graph is quantized and the mAP that costs measured on the
    checkpoint's validation data, refused above `max_map_drop`. Returns the file.

    The files are written under temporary names beside `cfg.output` and renamed to it only
    once checked: a failed check or export leaves no unchecked file, and an older file stays."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r}: one of {', '.join(FORMATS)}")
    check_quantize(cfg)
    if cfg.pt2_cpu != "native" and cfg.format != "pt2":  # (not silently ignored)
        raise ValueError(
            f"pt2_cpu={cfg.pt2_cpu}: the CPUs a format=pt2 package is built for; this export "
            f"is format={cfg.format}"
        )
    quiet_libraries()  # (int8's mAP: no COCO summary table per graph)
    suffix, runtime = FORMATS[cfg.format]
    write, load = exporter(cfg.format if not cfg.quantize else "onnx", cfg.opset, cfg.pt2_cpu)
    name = f"model{'.int8' if cfg.quantize else ''}{suffix}"
    output = writable_file(cfg.output or f"{cfg.paths.output_dir}/{name}")
    if cfg.format != "onnx" and output.suffix != suffix:  # (their loaders go by it)
        raise ValueError(f"output={cfg.output!r}: a {cfg.format} file's name ends in {suffix}")
    # the graph is the detector's fixed-shape `detect`: no test-time augmentation in it, nor
    # in the PyTorch detections it is checked against
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, "cpu", cfg.score_thresh, cfg.nms_thresh, cfg.max_detections, tta="none"
    )
    images = check_images(cfg.check_images, predictor)  # a bad one fails before the export
    # and bad data settings: both splits' sources are built now
    overrides = HydraConfig.get().overrides.task
    data, calibration = checkpoint_data(cfg, overrides) if cfg.quantize else (None, None)
    size, resize = predictor.transform.size, predictor.transform.resize
    info = detector_graph.metadata(size, resize, predictor.class_names, predictor.category_ids)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp{output.suffix}")
    # int8: the float graph (checked against PyTorch) and the quantized ONNX graph go first
    float_graph = temporary.with_suffix(".float.onnx") if cfg.quantize else temporary
    int8_graph = temporary.with_suffix(".int8.onnx") if cfg.format == "openvino" else temporary
    made = {float_graph, int8_graph, *written(temporary, cfg.format)}
    try:
        write(predictor.model, float_graph, size, info)
        checked_by = runtime if not cfg.quantize else FORMATS["onnx"][1]
        check_graph(load, float_graph, predictor, images, checked_by, output)
        if cfg.quantize:
            graphs = float_graph, int8_graph, temporary
            quantize_graph(cfg, data, calibration, graphs, info, output)
        megabytes = move_into_place(temporary, output, cfg.format, cfg.output)
    finally:
        for made_file in made:
            made_file.unlink(missing_ok=True)
    log.info(
        "Wrote %s (%.1f MB%s)\n  inputs:  images uint8 (B, 3, %d, %d) %sed, image_sizes int64 "
        "(B, 2)\n  outputs: boxes (B, K, 4), scores (B, K), labels (B, K), num_detections (B,); "
        "K = %d",
        " + ".join(map(str, written(output, cfg.format))), megabytes,
        ", int8" if cfg.quantize else "", size, size, resize,
        predictor.model.roi_heads.detections_per_img,
    )  # fmt: skip
    return output


def check_graph(load, graph: Path, predictor: Predictor, images, runtime: str, output) -> None:
    """`graph` run by `load`'s runtime (named `runtime`) on `images` at batch 1 and 4, against
    the PyTorch detector's detections: the verdicts logged, an error (`output` not written)
    where they differ."""
    batch, sizes, _ = predictor.batch(images)
    run, _ = load(graph)
    expected = detector_graph.reference(predictor.model, batch, sizes)
    reports = detector_graph.check(run, predictor.model, batch, sizes, expected)
    log.info("\n".join(check_lines(reports, len(images), runtime)))
    if not all(r["ok"] for r in reports):
        raise RuntimeError(
            f"{runtime}'s detections differ from PyTorch's beyond "
            f"{detector_graph.box_tolerance(predictor.transform.size):g} px / "
            f"{detector_graph.SCORE_TOLERANCE} (see above): {output} was not written. "
            + float32_verdict(reports, predictor.model, batch, sizes, expected)
        )


NOISE_DRAWS = 8  # at most, after a failed check: each draw costs two forward passes more


def float32_verdict(reports: list[dict], model, batch, sizes, expected) -> str:
    """Whether float32's rounding can explain the images where a check failed: PyTorch against
    itself (its detections `expected`, the check's) with its weights moved by one part in a
    million fails on each of them too, in one draw or another, a decision there lying that
    close to a cut (other check images can then show the export right), or in none of
    `NOISE_DRAWS` draws (the difference is then most likely the runtime's). The draws stop once
    every failed image has failed in one (where measured, a flip within rounding showed in 5 of
    12 draws: bench/README.md; a runtime's error shows in none)."""
    log.info("Is it float32's rounding? PyTorch against itself with its weights moved by "
             "1e-6 (up to %d draws)...", NOISE_DRAWS)  # fmt: skip
    failed = {(r["batch"], r["image"]) for r in reports if not r["ok"]}
    shaky = set()
    for seed in range(NOISE_DRAWS):
        noisy = detector_graph.noise_check(model, batch, sizes, seed, expected)
        shaky |= {(r["batch"], r["image"]) for r in noisy if not r["ok"]}
        if failed <= shaky:
            return (
                f"PyTorch itself detects otherwise on {named(failed)} with its weights moved by "
                f"one part in a million ({counted(seed + 1, 'draw')}): a decision there lies "
                "within float32's rounding, which two runtimes may take either way; "
                "check_images= other images (a file, folder or glob) can show the export right"
            )
    return (
        f"PyTorch with its weights moved by one part in a million detects the same on "
        f"{named(failed - shaky)} in all {NOISE_DRAWS} draws: the difference is most likely the "
        "runtime's, not float32's rounding"
    )


def named(images: set[tuple[int, int]]) -> str:
    """{(batch size, image index)} -> "image 0 (batch 1), ..." as the check's lines name them."""
    return ", ".join(f"image {image} (batch {batch})" for batch, image in sorted(images))


def move_into_place(temporary: Path, output: Path, format: str, setting) -> float:
    """The checked files renamed from `temporary` to `output` (OpenVINO's graph last, its
    weights in place before it) -> their size in MB. `setting`: `output=` as given, for the
    error where they cannot be."""
    megabytes = sum(f.stat().st_size for f in written(temporary, format)) / 2**20
    pairs = zip(written(temporary, format), written(output, format), strict=True)
    try:
        for made_file, final in reversed(list(pairs)):
            os.replace(made_file, final)
    except OSError as err:
        raise OSError(f"output={setting!r} could not be written: {err}") from None
    return megabytes


def check_quantize(cfg) -> None:
    """quantize= null or int8, on a format whose runtime runs int8 QDQ graphs, with a number
    of calibration images and a largest mAP drop that make sense."""
    if cfg.quantize is None:
        return
    if cfg.quantize != "int8":
        raise ValueError(f"quantize={cfg.quantize!r}: null (float32) or int8")
    if cfg.format == "pt2":
        raise ValueError("quantize=int8: format=onnx or openvino (onnxruntime's quantization)")
    check_number("calibration_images", cfg.calibration_images, 1, integer=True)
    drop = cfg.max_map_drop
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise ValueError(f"max_map_drop={drop!r}: the mAP int8 may cost, 0..1 (0.01: a point)")


def checkpoint_data(cfg, overrides: list[str]):
    """The data module of the checkpoint at `cfg.ckpt_path` (its saved data config, with what
    the command line's `overrides` set under `data.`), its validation split built (int8 is
    measured on it), and the loader of the training images that calibrate
    (`calibration_dataloader`)."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run = checkpoint_run_config(cfg, checkpoint["config"], overrides)
    datamodule = instantiate(run.data)
    datamodule.setup("validate")
    by_name(datamodule, checkpoint)
    return datamodule, datamodule.calibration_dataloader()


def calibration_batches(loader, count: int) -> list:
    """(images, image_sizes) of the first `count` images of `loader`'s batches, or of all of
    them where it has fewer; the log says how many."""
    batches, taken = [], 0
    for batch in loader:
        keep = min(count - taken, len(batch["images"]))
        batches.append((batch["images"][:keep], batch["image_sizes"][:keep]))
        taken += keep
        if taken >= count:
            break
    fewer = f" (all the data has; calibration_images={count})" if taken < count else ""
    log.info("Quantizing to int8, calibrated on %s%s...", counted(taken, "training image"), fewer)
    return batches


def quantize_graph(cfg, data, calibration, graphs, info, output) -> None:
    """The checked float graph quantized to int8, calibrated on `calibration`'s batches
    (`graphs`: the float graph, the int8 graph, and for openvino the IR it is converted to),
    its mAP on `data`'s validation images against the float graph's; refused above
    `cfg.max_map_drop`."""
    from frcnn.inference import onnx_graph, openvino_ir, quantize

    float_graph, int8_graph, path = graphs

    batches = calibration_batches(calibration, cfg.calibration_images)
    quantize.quantize_int8(float_graph, int8_graph, batches)
    if cfg.format == "openvino":
        openvino_ir.convert(int8_graph, path, info)
    _, load = exporter(cfg.format, cfg.opset)
    runs = {"float32": onnx_graph.load(float_graph)[0], "int8": load(path)[0]}
    detectors = {name: per_image(run) for name, run in runs.items()}
    log.info("Measuring float32 and int8 on the validation images...")
    found = quantize.mean_ap(detectors, data.val_dataloader())
    drop = found["float32"]["map"] - found["int8"]["map"]
    count = found["int8"]["images"]
    lines = [f"mAP on the checkpoint's validation data ({counted(count, 'image')}):"]
    lines += [
        f"  {name:<8} mAP {v['map']:.4f}  mAP@0.5 {v['map_50']:.4f}" for name, v in found.items()
    ]
    lines.append(f"  int8 costs {drop:.4f} mAP (max_map_drop={cfg.max_map_drop})")
    log.info("\n".join(lines))
    if drop > cfg.max_map_drop:
        raise RuntimeError(
            f"int8 costs {drop:.4f} mAP (float32 {found['float32']['map']:.4f}, int8 "
            f"{found['int8']['map']:.4f}), more than max_map_drop={cfg.max_map_drop}: {output} "
            "was not written (the ranges come from the calibration images: try another "
            "calibration_images=, or keep float32)"
        )


def written(path: Path, format: str) -> list[Path]:
    """The files of an export to `path`: the graph, and OpenVINO's weights beside it."""
    return [path, path.with_suffix(".bin")] if format == "openvino" else [path]


def exporter(format: str, opset: int, pt2_cpu: str = "native"):
    """The format's (write(model, path, image_size, metadata), load(path) -> (runner,
    metadata)); a missing dependency or a bad setting is named before anything is loaded."""
    if format == "pt2":
        from frcnn.inference import pt2_package

        pt2_package.check_cpu_target(pt2_cpu)

        def write(model, path, size, info):
            log.info(
                "Exporting with torch.export, compiling with AOTInductor for %s CPUs "
                "(minutes)...", "this machine's" if pt2_cpu == "native" else pt2_cpu
            )  # fmt: skip
            pt2_package.export_pt2(model, path, size, info, pt2_cpu)

        return write, pt2_package.load
    needs = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}[format]
    require_extra(f"export.py format={format}", needs, "export")
    from frcnn.inference import onnx_graph, openvino_ir

    opset = onnx_graph.check_opset(opset)
    if format == "openvino":

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
    if spec is not None and not isinstance(spec, str):  # (check_images=0: no check is skipped)
        raise ValueError(
            f"check_images={spec!r}: a file, folder or glob of images, up to 4 (null: 4 "
            "synthetic ones); every export is checked"
        )
    if not spec:
        num_classes = min(predictor.model.roi_heads.num_classes, 24)
        return [draw_sample(0, i, num_classes, 240, 640).image for i in range(CHECK_IMAGES)]
    images = []
    for path in find_images(spec, "check_images")[:CHECK_IMAGES]:
        try:
            images.append(open_image(path))
        except UNREADABLE_IMAGE as err:
            raise ValueError(f"check_images: {path} cannot be read ({unreadable(err)})") from None
    return images


def check_lines(reports: list[dict], count: int, runtime: str) -> list[str]:
    """The check's report, a line per image and batch size."""
    lines = [f"{runtime} against PyTorch on {counted(count, 'image')}:"]
    for r in reports:
        verdict = "same" if r["ok"] else "DIFFERENT"
        lines.append(
            f"  batch {r['batch']}, image {r['image']}: {counted(r['count'], 'detection')} "
            f"(PyTorch {r['expected']}), boxes within {r['box_diff']:.1e} px, scores within "
            f"{r['score_diff']:.1e}: {verdict}"
        )
    return lines


def writable_file(spec: str) -> Path:
    """The path of a file to write, its folder created; a clear error where it cannot be."""
    path = path_of("output", spec)
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
