"""CPU inference latency of every backend against torchvision's eager Faster R-CNN, same weights.

    uv run python bench/cpu_inference.py                         # ResNet-50-FPN, 400 and 800 px
    uv run python bench/cpu_inference.py --sizes 400 --reps 10 --backends torch onnxruntime
    uv run python bench/cpu_inference.py --checkpoint logs/train/runs/<run>/checkpoints/last.ckpt

One torchvision `fasterrcnn_resnet50_fpn` (random weights, seed 0, 91 classes, resized to the
input size: `min_size = max_size = S`) and this project's detector built from it
(`from_torchvision`: the same weights and post-processing) detect the same letterboxed batches
(synthetic images of 240-640 px), batch 1 and 4, through: torchvision eager, this detector
eager, the exported graph in onnxruntime, in OpenVINO (float32), as an AOTInductor package
(pt2), and quantized to int8 (`quantize=int8`, calibrated on 8 other synthetic images) in
onnxruntime and OpenVINO. Every float backend is checked first (the export check: PyTorch's
detections; where one differs, the export's verdict on whether float32's rounding explains it);
int8 is not the same computation. Medians of `--reps` runs after one warm-up, the
backends taking turns at every run, ms per image, and the ratio to torchvision eager. Random
weights time the work as trained ones do (every image keeps the full proposal and detection
counts). Not a test.

Then the same times as GFLOP/s: the eager detector's FLOPs per image (torch's `FlopCounterMode`:
convolutions and matrix products, the work the same detections need) over each backend's time:
how close each comes to what the CPU's cores can do, which bounds how fast any float32 backend
can be.

Before the timings, float32's own noise at each size: PyTorch against itself with every weight
scaled by 1 + 1e-6 x N(0, 1) (as kernels that sum in another order move results), through the
export check (`--noise-seeds` draws): how far boxes and scores move, and whether the check's
tolerances hold them.

With `--checkpoint`: the mAP of every backend but torchvision (the project converts
torchvision's weights to its own layout, not back) on the checkpoint's validation data, at its
image size, int8 calibrated as `export.py quantize=int8` does (its first 32 training images);
before it, the float32 noise lines of the checkpoint's model on the images `export.py` checks
on by default (how far a trained model's decisions lie from its thresholds).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from frcnn.app.export import check_lines, float32_verdict
from frcnn.data.synthetic import draw_sample
from frcnn.inference import onnx_graph, openvino_ir, pt2_package, quantize
from frcnn.inference.detector_graph import check, metadata, noise_check, reference
from frcnn.inference.predictor import Predictor, per_image
from frcnn.model.convert import from_torchvision

BACKENDS = ["torchvision", "torch", "onnxruntime", "openvino", "pt2", "int8 onnxruntime",
            "int8 openvino"]  # fmt: skip


def median_ms(runs: dict, reps: int) -> dict[str, float]:
    """{name: median ms of `reps` calls of runs[name]()}, after a warm-up call of each; the
    runs take turns at every repetition, so that a slow spell of a shared machine falls on
    all of them, not on whichever ran then."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(spent) for name, spent in times.items()}


def detector_flops(model, images, sizes) -> float:
    """FLOPs of one eager call of the detector on `images` (torch's FlopCounterMode)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(images, image_sizes=sizes)
    return counter.get_total_flops()


def table(rows, backends: list[str], cell) -> None:
    """A markdown table: a row per (size, batch, times, flops) of `rows`, the text
    cell(times, backend, flops) per backend."""
    print("\n| size | batch | " + " | ".join(backends) + " |")
    print("| --- | --- |" + " --- |" * len(backends))
    for size, batch, times, flops in rows:
        print(f"| {size} | {batch} | " + " | ".join(cell(times, b, flops) for b in backends) + " |")


def runners(model, tv_model, size: int, folder: Path, backends: list[str], calibration,
            info=None) -> dict:  # fmt: skip
    """{backend: run(images uint8 (B, 3, S, S), image_sizes (B, 2))}: the models' own outputs
    (one dict per image), the exported files' padded arrays."""
    info = info or metadata(size, "letterbox", None, None)
    runs = {}
    if "torchvision" in backends:
        runs["torchvision"] = lambda x, s: tv_model(list(x.float() / 255))
    if "torch" in backends:
        runs["torch"] = lambda x, s: model(x, image_sizes=s)
    float_onnx = folder / f"{size}.onnx"
    onnx_graph.export_onnx(model, float_onnx, size, 17, info)
    if "onnxruntime" in backends:
        runs["onnxruntime"] = onnx_graph.load(float_onnx)[0]
    if "openvino" in backends:
        openvino_ir.convert(float_onnx, folder / f"{size}.xml", info)
        runs["openvino"] = openvino_ir.load(folder / f"{size}.xml")[0]
    if "pt2" in backends:
        pt2_package.export_pt2(model, folder / f"{size}.pt2", size, info)
        runs["pt2"] = pt2_package.load(folder / f"{size}.pt2")[0]
    if any(b.startswith("int8") for b in backends):
        int8 = folder / f"{size}.int8.onnx"
        quantize.quantize_int8(float_onnx, int8, calibration)
        if "int8 onnxruntime" in backends:
            runs["int8 onnxruntime"] = onnx_graph.load(int8)[0]
        if "int8 openvino" in backends:
            openvino_ir.convert(int8, folder / f"{size}.int8.xml", info)
            runs["int8 openvino"] = openvino_ir.load(folder / f"{size}.int8.xml")[0]
    return runs


def float_noise(model, images, sizes, seeds: int, expected=None) -> list[str]:
    """The export check of PyTorch against itself with its weights scaled by 1 + 1e-6 noise,
    one line per seed: the largest box (px) and score differences, and the check's verdict.
    (`expected`: the model's `reference`, computed here where not given.)"""
    lines, expected = [], expected or reference(model, images, sizes)
    for seed in range(seeds):
        reports = noise_check(model, images, sizes, seed, expected)
        lines.append(
            f"weights x (1 + 1e-6 noise), seed {seed}: "
            f"{sum(r['expected'] for r in reports)} detections, boxes within "
            f"{max(r['box_diff'] for r in reports):.2g} px, scores within "
            f"{max(r['score_diff'] for r in reports):.1e}; "
            f"the check passes: {all(r['ok'] for r in reports)}"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 800])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    parser.add_argument("--reps", type=int, default=5)
    quick = "18: a small stand-in for a quick try (not torchvision's model)"
    parser.add_argument("--depth", type=int, default=50, choices=[18, 50], help=quick)
    parser.add_argument("--checkpoint", help="the mAP of each backend on its validation data")
    parser.add_argument("--noise-seeds", type=int, default=4, help="float32 noise draws (0: none)")
    args = parser.parse_args()

    import onnxruntime
    import openvino

    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchvision "
        f"{torchvision.__version__}, onnxruntime {onnxruntime.__version__}, openvino "
        f"{openvino.__version__}; "
        + ("the checkpoint's detector\n" if args.checkpoint
           else f"ResNet-{args.depth}-FPN, random weights\n")
    )  # fmt: skip
    if args.checkpoint:
        backends = [b for b in args.backends if b != "torchvision"]
        checkpoint_map(args.checkpoint, backends, args.noise_seeds)
        return
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        tv_model = tv_detector(args.depth, size).eval()
        model = from_torchvision(tv_model).eval()
        photos = [draw_sample(1, i, 24, 240, 640).image for i in range(max(args.batch_sizes))]
        images, sizes, _ = Predictor(model, size, device="cpu").batch(photos)
        others = [draw_sample(2, i, 24, 240, 640).image for i in range(8)]
        calibration = [Predictor(model, size, device="cpu").batch(others[i : i + 4])[:2]
                       for i in (0, 4)]  # fmt: skip
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            expected = reference(model, images, sizes)  # once, for every check below
            for line in float_noise(model, images, sizes, args.noise_seeds, expected):
                print(f"{size} px, PyTorch, {line}")
            runs = runners(model, tv_model, size, Path(folder), args.backends, calibration)
            for name, run in runs.items():
                if name in ("onnxruntime", "openvino", "pt2"):
                    reports = check(run, model, images, sizes, expected)
                    same = all(r["ok"] for r in reports)
                    print(f"{size} px, {name}: the same detections as PyTorch: {same}")
                    if not same:  # what differed, and whether float32's rounding explains it
                        print("\n".join(check_lines(reports, len(images), name)[1:]))
                        verdict = float32_verdict(reports, model, images, sizes, expected)
                        print(f"{size} px, {name}: {verdict}")
            for batch in args.batch_sizes:
                x, s = images[:batch], sizes[:batch]
                calls = {name: lambda r=run, x=x, s=s: r(x, s) for name, run in runs.items()}
                times = {name: ms / batch for name, ms in median_ms(calls, args.reps).items()}
                rows.append((size, batch, times, detector_flops(model, x, s) / batch))

    def ms_and_ratio(times, backend, flops):
        reference = times.get("torchvision")
        ratio = f" ({times[backend] / reference:.2f}x)" if reference else ""
        return f"{times[backend]:.0f}{ratio}"

    table(rows, args.backends, ms_and_ratio)
    print("\nGFLOP/s: the eager detector's FLOPs per image over each backend's time")
    table(rows, args.backends, lambda times, backend, flops: f"{flops / times[backend] / 1e6:.0f}")


def checkpoint_map(path: str, backends: list[str], noise_seeds: int) -> None:
    """Each backend's COCO mAP on the checkpoint's validation data (its saved data config),
    after the float32 noise lines on export.py's default check images."""
    from omegaconf import OmegaConf

    from frcnn.app.export import calibration_batches, check_images, checkpoint_data

    data, calibration_loader = checkpoint_data(OmegaConf.create({"ckpt_path": path}), [])
    predictor = Predictor.from_checkpoint(path, "cpu", tta="none")
    model, size = predictor.model, predictor.transform.size
    images, sizes, _ = predictor.batch(check_images(None, predictor))
    for line in float_noise(model, images, sizes, noise_seeds):
        print(f"{size} px, export.py's check images, {line}")
    info = metadata(size, predictor.transform.resize, data.class_names, data.category_ids)
    with tempfile.TemporaryDirectory() as folder:
        calibration = list(calibration_batches(calibration_loader, 32))
        runs = runners(model, None, size, Path(folder), backends, calibration, info)
        detectors = {name: model if name == "torch" else per_image(run)
                     for name, run in runs.items()}  # fmt: skip
        found = quantize.mean_ap(detectors, data.val_dataloader())
    count = next(iter(found.values()))["images"]
    print(f"{path}: {size} px, {count} validation images\n")
    print("| backend | mAP | mAP@0.5 |\n| --- | --- | --- |")
    for name, figures in found.items():
        print(f"| {name} | {figures['map']:.4f} | {figures['map_50']:.4f} |")


def tv_detector(depth: int, size: int):
    """torchvision's Faster R-CNN at one input size (no resize beyond it): ResNet-50-FPN as
    torchvision builds it, or (depth 18) a small stand-in for a quick try: a ResNet-18-FPN with a
    256-wide box head, 100 proposals and 4 classes (whose random scores, near 1/5, pass the score
    threshold, so that the backends are compared on detections)."""
    sizes = {"min_size": size, "max_size": size}
    if depth == 50:
        return torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, **sizes
        )
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    return torchvision.models.detection.FasterRCNN(
        backbone,
        box_head=TwoMLPHead(backbone.out_channels * 7**2, 256),
        box_predictor=FastRCNNPredictor(256, 5),
        rpn_post_nms_top_n_test=100,
        **sizes,
    )


if __name__ == "__main__":
    main()
