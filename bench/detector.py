"""This project's detector against torchvision's fasterrcnn_resnet50_fpn, same settings, same run.

    uv run python bench/detector.py [--device cpu|cuda] [--sizes 400 416] [--batch-size 2]
        [--precision 32-true|16-mixed|bf16-mixed] [--channels-last] [--compile] [--reps 5]
    uv run python bench/detector.py --breakdown      # time per stage of our detector
    uv run python bench/detector.py --counts         # ops, NMS calls, host waits, fp32 bytes
    uv run python bench/detector.py --memory         # peak memory at batch 2/8/16, both
        [--boxes 7]                                  # ground-truth boxes per image
    uv run python bench/detector.py --profile        # top kernels of a train step, both

Both detectors are ResNet-50-FPN with identical random weights (converted with
`from_torchvision`), FrozenBatchNorm2d with stem..layer3 frozen, the same RPN/ROI counts and
thresholds and the same synthetic targets. Train step = forward + backward + SGD step.
Repetitions are interleaved A/B after warm-up, training and inference in separate phases;
medians are printed with the ratio ours / torchvision. --channels-last and --compile apply to
both detectors. Not a test.
"""

import argparse
import contextlib
import multiprocessing
import queue as queue_module
import resource
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from frcnn.model import from_torchvision
from frcnn.structures import Targets
from frcnn.training.module import compile_parts


def build_pair(size: int, device, depth: int = 50, nms_calls: str = "image"):
    """(this detector, torchvision's), the same weights; ours with `nms_calls` (not `auto`: a
    measurement names what it measures)."""
    torch.manual_seed(0)
    resnet = torchvision.models.get_model(f"resnet{depth}", norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, trainable_layers=1)  # stem..layer3 frozen
    tv = TVFasterRCNN(backbone, num_classes=81, min_size=size, max_size=size)
    ours = from_torchvision(tv)
    use_nms_calls(ours, nms_calls)
    return ours.to(device), tv.to(device)


def use_nms_calls(model, calls: str) -> None:
    """Switch a built detector's `model.nms_calls` (the RPN, the ROI heads and TTA's merge)."""
    model.nms_calls = model.rpn.nms_calls = model.roi_heads.nms_calls = calls


def synthetic_batch(batch_size: int, size: int, device, seed: int = 0, num_boxes: int = 7):
    """`num_boxes` per image (7: COCO's mean number of objects per image)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=g)
    targets = []
    for _ in range(batch_size):
        n = num_boxes
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = torch.rand(n, 2, generator=g) * size * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        labels = torch.randint(1, 81, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return images.to(device), Targets(targets).to(device)  # as `collate` makes them


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# train.py's precision names (conf/precision/) and the autocast dtype of each
AUTOCAST_DTYPES = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def autocast(device, precision):
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_steps(model, is_tv, images, targets, device, precision, channels_last):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    floats = list(images.float() / 255)  # torchvision takes a list of float images in 0..1
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ours_images = images.contiguous(memory_format=memory_format)

    def train_step():
        model.train()
        with autocast(device, precision):
            losses = model(floats, targets) if is_tv else model(ours_images, targets)
            loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def infer():
        model.eval()
        with autocast(device, precision):
            return model(floats) if is_tv else model(ours_images)

    return train_step, infer


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def compare(args, size, device):
    ours, tv = build_pair(size, device, nms_calls=args.nms_calls[0])
    if args.channels_last:  # the same layout and compilation for both
        ours, tv = (
            ours.to(memory_format=torch.channels_last),
            tv.to(memory_format=torch.channels_last),
        )
    if args.compile:
        compile_parts(ours, "inductor", "backbone")  # what module.compile=true compiles
        tv.backbone = torch.compile(tv.backbone)  # torchvision's backbone includes its FPN
    images, targets = synthetic_batch(args.batch_size, size, device, num_boxes=args.boxes)
    steps = {
        "ours": make_steps(
            ours, False, images, targets, device, args.precision, args.channels_last
        ),
        "torchvision": make_steps(tv, True, images, targets, device, args.precision, False),
    }
    times = {(name, kind): [] for name in steps for kind in ("train", "infer")}
    # training first, then inference: timed right after a train step, an inference pays for
    # the memory that step freed (page faults on a CPU), unevenly between the two detectors
    for kind, step in (("train", 0), ("infer", 1)):
        per = 1 if kind == "train" else args.batch_size
        for rep in range(args.warmup + args.reps):
            for name, fns in steps.items():  # interleaved A/B
                elapsed = timed(fns[step], device)
                if rep >= args.warmup:
                    times[(name, kind)].append(elapsed / per)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"proposals per image at inference, {size} px: {proposals_per_image(ours, images):.0f}")
    for kind, unit in (("train", "s/step"), ("infer", "s/image")):
        ratio = median[("ours", kind)] / median[("torchvision", kind)]
        print(
            f"| {size} | {kind} ({unit}) | {median[('ours', kind)]:.3g} | "
            f"{median[('torchvision', kind)]:.3g} | {ratio:.2f} |"
        )


@torch.no_grad()
def proposals_per_image(model, images) -> float:
    """How many proposals the RPN passes to the ROI heads at inference, per image.

    A trained RPN passes the full post-NMS count (1000); a freshly initialised one far fewer,
    which would make inference look cheaper than it is: the inference phase runs after the
    training phase, and this line shows where it stands.
    """
    counts = []
    hook = model.rpn.register_forward_hook(
        lambda rpn, inputs, out: counts.append(out[0].valid.sum(1))  # out: (Proposals, losses)
    )
    model.eval()
    model(images)
    hook.remove()
    return counts[0].float().mean().item()


class StepCounts(TorchDispatchMode):
    """What a pass costs besides arithmetic, counted op by op below autograd (forward and
    backward), on any device:

    - `ops`: aten ops dispatched, views left out (they launch no kernel);
    - `nms`: NMS kernel calls;
    - `waits`: ops that make a CUDA host wait for the device: those whose output size depends
      on data (nonzero, boolean-mask indexing, NMS, unique, ...) and reads of a value
      (`.item()`, `if tensor:`); host-device copies are invisible here (on a GPU,
      `set_sync_debug_mode` sees those too);
    - `bytes`: bytes of the floating-point tensors the forward pass makes (the optimiser's
      too), by dtype: under autocast, how much stays in float32.
    """

    SIZE_FROM_DATA = {
        "nonzero",
        "masked_select",
        "unique",
        "_unique2",
        "unique_consecutive",
        "nms",
        "bincount",
        "repeat_interleave",
        "_local_scalar_dense",
    }

    def __init__(self):
        super().__init__()
        self.ops, self.nms, self.waits, self.bytes = 0, 0, Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        self.ops += not func.is_view
        self.nms += name == "nms"
        # index / index_put_ with a boolean mask run a nonzero inside
        indices = args[1] if name.startswith("index") and len(args) > 1 else ()
        if name in self.SIZE_FROM_DATA:
            self.waits[name] += 1
        elif isinstance(indices, list | tuple) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices
        ):
            self.waits[f"{name} (bool mask)"] += 1
        forward = torch._C._current_graph_task_id() == -1  # not inside backward()
        if forward and not func.is_view:
            for tensor in out if isinstance(out, list | tuple) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    self.bytes[tensor.dtype] += tensor.numel() * tensor.element_size()
        return out


@contextlib.contextmanager
def cuda_branches():
    """torchvision's `batched_nms` as it runs on CUDA: one `nms` per group above 20,000
    coordinates (4,000 on a CPU), so that a CPU counts the calls a GPU makes. (This project's
    NMS takes no such branch: `model.nms_calls`.)"""
    from torchvision.ops import boxes as box_ops

    original = box_ops.batched_nms

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() > 20_000:
            return box_ops._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
        return box_ops._batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)

    box_ops.batched_nms = batched_nms
    try:
        yield
    finally:
        box_ops.batched_nms = original


def count_step(args, size, device):
    """`StepCounts` of one train step (forward + backward) and one inference, both detectors,
    on the code paths CUDA takes."""
    ours, tv = build_pair(size, device)
    images, targets = synthetic_batch(args.batch_size, size, device, num_boxes=args.boxes)
    low = AUTOCAST_DTYPES[args.precision]
    print(f"\nCounts, {size} px, batch {args.batch_size}, precision {args.precision}")
    print("| detector | pass | aten ops | NMS calls | host waits | which | float32 MB | "
          "low-precision MB |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    variants = [(f"ours, nms_calls={calls}", ours, False, calls) for calls in args.nms_calls]
    for name, model, is_tv, calls in [*variants, ("torchvision", tv, True, None)]:
        if calls:
            use_nms_calls(model, calls)
        train_step, infer = make_steps(model, is_tv, images, targets, device, args.precision, False)
        for kind, fn in (("train step", train_step), ("inference", infer)):
            with cuda_branches():
                fn()  # warm-up (caches)
                with StepCounts() as mode:
                    fn()
            waits = ", ".join(f"{op} {n}" for op, n in mode.waits.most_common())
            fp32, half = mode.bytes[torch.float32] / 2**20, mode.bytes[low] / 2**20 if low else 0
            print(
                f"| {name} | {kind} | {mode.ops} | {mode.nms} | {mode.waits.total()} | {waits} "
                f"| {fp32:.0f} | {half:.0f} |"
            )


def profile(args, size, device):
    """torch.profiler's top kernels (self time) of one train step of each detector."""
    ours, tv = build_pair(size, device, nms_calls=args.nms_calls[0])
    images, targets = synthetic_batch(args.batch_size, size, device, num_boxes=args.boxes)
    for name, model, is_tv in (("ours", ours, False), ("torchvision", tv, True)):
        train_step, _ = make_steps(model, is_tv, images, targets, device, args.precision, False)
        train_step()  # warm-up
        with torch.profiler.profile() as prof:
            train_step()
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n{name}, one train step, {size} px, batch {args.batch_size}")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=12))


def cuda_syncs(fn) -> list[str]:
    """The synchronising CUDA calls during one call of fn, as torch's sync debug mode reports
    them: the Python line of each (`folder/file.py:line`, where the op was called)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [
        f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message)
    ]


def _peak_memory_child(args, name, batch_size, size, queue):
    device = torch.device(args.device)
    ours, tv = build_pair(size, device, nms_calls=args.nms_calls[0])
    model, is_tv = (tv, True) if name == "torchvision" else (ours, False)
    del ours, tv  # only the measured model stays (on a GPU its weights count)
    images, targets = synthetic_batch(batch_size, size, device, num_boxes=args.boxes)
    train_step, _ = make_steps(model, is_tv, images, targets, device, args.precision, False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        train_step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    queue.put((after, after - before, cuda))


def peak_memory(args, size, device):
    """Peak memory of two train steps per detector and batch size, each in a fresh process."""
    cuda = device.type == "cuda"
    print(f"\nPeak memory of two train steps, {size} px, precision {args.precision}")
    print(
        "| batch | detector | peak RSS (MiB) | RSS added by the steps (MiB) |"
        + (" max CUDA allocated (MiB) |" if cuda else "")
    )
    print("| --- | --- | --- | --- |" + (" --- |" if cuda else ""))
    context = multiprocessing.get_context("spawn")
    for batch_size in args.memory_batch_sizes:
        for name in ("ours", "torchvision"):
            queue = context.Queue()
            child = context.Process(
                target=_peak_memory_child, args=(args, name, batch_size, size, queue)
            )
            child.start()
            rss, added, cuda_mib = result_of(child, queue)
            row = f"| {batch_size} | {name} | {rss:.0f} | {added:.0f} |"
            print(row + (f" {cuda_mib:.0f} |" if cuda else ""))


def result_of(child, queue):
    """What `child` puts on `queue`; an error if it ends without (queue.get would wait forever)."""
    while True:
        try:
            result = queue.get(timeout=5)
        except queue_module.Empty:
            if not child.is_alive():
                raise RuntimeError(f"{child.name} ended with exit code {child.exitcode}") from None
        else:
            child.join()
            return result


def breakdown(args, size, device):
    """Time per stage of this detector's real train step and inference, measured with
    torch.profiler over the stages' own record_function labels (frcnn.*): nothing here
    re-implements the pipeline. The labelled stages do not overlap."""
    model, _ = build_pair(size, device, nms_calls=args.nms_calls[0])
    images, targets = synthetic_batch(args.batch_size, size, device, num_boxes=args.boxes)
    train_step, infer = make_steps(model, False, images, targets, device, args.precision, False)
    for _ in range(args.warmup):
        train_step()
        infer()
    print(f"\nStage breakdown, {size} px, batch {args.batch_size}, {device}: s per batch")
    for name, step in (("train step", train_step), ("inference", infer)):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.reps):
                with torch.profiler.record_function("frcnn.step"):
                    step()
                synchronize(device)
        times = {}
        for event in prof.key_averages():
            if event.key.startswith("frcnn."):
                total = event.device_time_total if device.type == "cuda" else event.cpu_time_total
                times[event.key] = total / 1e6 / args.reps
        whole = times.pop("frcnn.step")
        print(f"\n{name}: {whole:.4f} s")
        print("| stage | time (s) | share |")
        print("| --- | --- | --- |")
        for key, value in sorted(times.items(), key=lambda kv: -kv[1]):
            print(f"| {key.removeprefix('frcnn.')} | {value:.4f} | {100 * value / whole:.0f}% |")
        rest = whole - sum(times.values())  # the labelled stages do not overlap
        print(f"| (the rest: backward, optimiser, ...) | {rest:.4f} | {100 * rest / whole:.0f}% |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 416])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--precision", default="32-true", choices=list(AUTOCAST_DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument(
        "--counts", action="store_true", help="ops, NMS calls, host waits, activation bytes"
    )
    parser.add_argument("--memory", action="store_true", help="peak memory per batch size")
    parser.add_argument("--profile", action="store_true", help="top kernels of a train step")
    parser.add_argument("--memory-batch-sizes", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument(
        "--boxes", type=int, default=7, help="ground-truth boxes per image (7: COCO's mean)"
    )
    parser.add_argument(
        "--nms-calls",
        nargs="+",
        default=["image"],
        choices=["image", "batch", "triton"],
        help="--counts: each; the other measures: the first",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {device}, "
        f"batch {args.batch_size}, precision {args.precision}, threads {torch.get_num_threads()}, "
        f"{args.boxes} boxes per image"
    )
    measures = {
        breakdown: args.breakdown,
        count_step: args.counts,
        peak_memory: args.memory,
        profile: args.profile,
    }
    only = [measure for measure, asked in measures.items() if asked]
    if only:
        for size in args.sizes:
            for measure in only:
                measure(args, size, device)
        return
    print("| input | measure | ours | torchvision | ours / torchvision |")
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        compare(args, size, device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak CPU RSS of this process: {rss:.0f} MiB")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
