"""predict.py: annotated copies and COCO-format detections of a folder of images."""

import glob
import io
import itertools
import json
import logging
import os
import re
import signal
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from frcnn.app.build import require_extra
from frcnn.checks import check_number, path_of
from frcnn.data.sources import UNREADABLE_IMAGE, image_files, image_suffixes, unreadable
from frcnn.inference.predictor import EXPORTED_BACKENDS, Predictor, open_image
from frcnn.inference.tiles import detect_tiled
from frcnn.inference.video import VIDEO_SUFFIXES
from frcnn.structures import counted
from frcnn.visualization.drawing import draw_detections

log = logging.getLogger(__name__)

SUBFOLDER_ENTRIES = 100_000  # a folder input's entries looked at for its subfolders' images


def find_images(spec: str, setting: str = "input") -> list[Path]:
    """An image file, a folder (its images, sorted) or a glob pattern -> image paths; the
    messages name `spec` as the `setting` it came from."""
    path = path_of(setting, spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.iterdir())
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    # regular files only: a named pipe (is_file is False) would block the read
    files = [p for p in files if p.is_file()]
    images = image_files(files, f"{setting}={spec!r}")
    left_out = []
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos:  # (predict.py reads a video given on its own)
        named = ", ".join(p.name for p in videos[:3]) + (", ..." if len(videos) > 3 else "")
        left_out.append(f"videos left out ({named})")
        if setting == "input":
            left_out[-1] += f": give a video on its own (input={videos[0]})"
    if path.is_dir():  # a folder is its own images: those of its subfolders are named
        suffixes = image_suffixes()
        # (a bounded look: input=~ would otherwise walk a whole home folder before starting)
        entries = list(itertools.islice(path.rglob("*"), SUBFOLDER_ENTRIES))
        nested = sum(p.parent != path and p.suffix.lower() in suffixes for p in entries)
        if nested:
            pattern = f"{spec.rstrip('/')}/**/*"
            bounded = len(entries) == SUBFOLDER_ENTRIES
            how_many = f"{nested} or more images" if bounded else counted(nested, "image")
            left_out.append(
                f"{how_many} in its subfolders left out ({setting}='{pattern}' reads them too)"
            )
    if not images:
        found = f"; {'; '.join(left_out)}" if left_out else ", folder of images or glob match"
        raise FileNotFoundError(f"{setting}={spec!r}: no image file{found}")
    for words in left_out:
        log.warning("%s=%r: %s", setting, spec, words)
    return images


def input_names(spec: str, files: list[Path]) -> list[str]:
    """Each input's path as detections.json names it: relative to the folder given, or to a
    glob's folder before its first wildcard (inputs of one name in two subfolders stay apart);
    a single file, its name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path.name]
    root = path if path.is_dir() else Path(*itertools.takewhile(literal, path.parts))
    return [os.path.relpath(file, root) for file in files]


def literal(part: str) -> bool:
    """Whether a path part has no glob wildcard."""
    return re.search(r"[*?[]", part) is None


def image_ids(files: list[Path]) -> list[int]:
    """One unique id per file: COCO's file names are their image ids (000000397133.jpg ->
    397133); a file with another name, or whose number another file already has, gets the next
    id above all of those."""
    numbers = [int(p.stem) if p.stem.isascii() and p.stem.isdigit() else None for p in files]
    taken, ids = set(), []
    next_free = max((n for n in numbers if n is not None), default=-1) + 1
    for number in numbers:
        if number is None or number in taken:
            number, next_free = next_free, next_free + 1
        taken.add(number)
        ids.append(number)
    return ids


def output_names(files: list[Path]) -> list[str]:
    """A distinct, safe file name for each input's annotated copy: its stem, with characters
    that file systems or PIL choke on replaced, and a number where two would clash."""
    names, seen, tried = [], set(), {}
    for index, path in enumerate(files):
        stem = re.sub(r"[^\w\-]+", "_", path.stem).strip("_") or f"image{index}"
        # "a", "a_1", "a_2", ... (also past a file that is named "a_1"), from the last number
        # this stem took: the names before it are taken (each frame_0001.jpg of 300 camera
        # folders tried every number before its own: 8 s for 300,000 files)
        n = tried.get(stem, 0)
        name = f"{stem}_{n}" if n else stem
        while name in seen:
            n += 1
            name = f"{stem}_{n}"
        seen.add(name)
        tried[stem] = n
        names.append(f"{name}.jpg")
    return names


@contextmanager
def stop_on_sigterm(kept: str):
    """SIGTERM (a scheduler, `kill`) stops the command as Ctrl-C does, with an exception, so
    that what it keeps in `finally` is written (`kept`: what that is, for the log); it exits
    with status 143 (128 + SIGTERM)."""
    status = 128 + signal.SIGTERM

    def stop(signum, frame):
        raise SystemExit(status)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except SystemExit as stopped:
        if stopped.code == status:
            log.error("predict stopped by SIGTERM: %s", kept)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Tally:
    """What a run has done so far: the inputs (images or frames) detected on, their
    detections, the best score, the detections drawn, and the inputs skipped (why)."""

    done: int = 0
    found: int = 0
    best: float = 0.0
    drawn: int = 0
    skipped: list[str] = field(default_factory=list)

    def add(self, results: list[dict]) -> None:
        """One input's COCO-style results."""
        self.done += 1
        self.found += len(results)
        self.best = max([self.best, *(r["score"] for r in results)])


def predict_files(cfg) -> dict:
    """predict.py: annotated images and detections.json for every readable input image.

    Unreadable files are skipped and listed at the end; an input file is never written over
    (an output folder that holds inputs is refused). detections.json keeps every detection
    (down to the checkpoint's score threshold, for COCOeval); the pictures draw those scoring
    at least `draw_thresh`. Returns a small report.
    """
    files = find_images(cfg.input)
    output = pictures_folder(cfg.output, files)
    check_settings(cfg)
    tiles = tile_settings(cfg)  # (both checked before the model loads)
    pixel_limit = image_pixel_limit(cfg.get("max_image_pixels"))
    predictor = load_predictor(cfg)
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "detections.json"
    started = time.monotonic()
    with (
        stop_on_sigterm(f"{json_path} holds the images done so far"),
        pixel_limit,
        json_array(json_path) as write_results,
    ):
        tally = detect_files(cfg, files, predictor, tiles, write_results, output)
    seconds = time.monotonic() - started
    log.info("\n".join(summary_lines(cfg, tally, json_path, seconds)))
    return {
        "images": tally.done,
        "detections": tally.found,
        "drawn": tally.drawn,
        "corrupt": tally.skipped,
    }


def output_folder(setting: str) -> Path:
    """The output folder (`output=` as given: `setting`), refused where it is a file."""
    output = path_of("output", setting).resolve()
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(
            f"output={setting!r} is a file: give a folder, which the annotated copies and the "
            "detections go in"
        )
    return output


def pictures_folder(setting: str, files: list[Path]) -> Path:
    """The output folder (`output_folder`), refused where it holds input images, which the
    annotated copies would overwrite."""
    output = output_folder(setting)
    if any(path.resolve().parent == output for path in files):
        raise ValueError(
            f"output={setting!r} holds input images, which the annotated copies would "
            "overwrite: choose another output folder"
        )
    return output


def detect_files(cfg, files: list[Path], predictor, tiles, write_results, output) -> Tally:
    """Detects on `files` (with `tiles`: `tile_settings`) a batch at a time, the next batch
    read while one is detected (`read_ahead`); each image's results go to `write_results`, its
    picture to `output` (drawn and saved by the reading threads, at most a batch of them
    waiting)."""
    prepare, detect = detector(cfg, predictor, tiles)
    # (tiles: the crops are prepared later, from the image)
    prepare_file = predictor.prepare_file if prepare else None
    ids, names, inputs = image_ids(files), output_names(files), input_names(cfg.input, files)
    batches = [
        range(start, min(start + cfg.batch_size, len(files)))
        for start in range(0, len(files), cfg.batch_size)
    ]
    tally, saving = Tally(), deque()  # (saving: each picture's drawn count, to come)
    with (
        tqdm(total=len(files), unit="image", desc="predict") as progress,
        ThreadPoolExecutor(IO_THREADS) as pool,
    ):
        for batch in read_ahead(pool, files, batches, prepare_file):
            tally.skipped += [read.problem for read in batch if read.problem]
            readable = [read for read in batch if not read.problem]
            images, prepared = [r.image for r in readable], [r.prepared for r in readable]
            detections = detect(images, prepared) if readable else []
            for read, detection in zip(readable, detections, strict=True):
                picture = output / names[read.index]
                saving.append(
                    pool.submit(save_picture, read.image, detection, predictor, cfg.draw_thresh,
                                picture)
                )  # fmt: skip
                found = predictor.coco_results(detection, ids[read.index], inputs[read.index])
                write_results({**r, "picture": names[read.index]} for r in found)
                tally.add(found)
            tally.drawn += finished(saving, cfg.batch_size)  # at most a batch waits
            progress.update(len(batch))
        tally.drawn += finished(saving)
    return tally


def image_pixel_limit(limit):
    """The images larger than `limit` pixels are refused (PIL's `DecompressionBombError`) while
    the block runs, the smaller ones read without PIL's warning; None: PIL's own limit (179
    megapixels, warned from 89). Checked when called (an int >= 1), before anything runs."""
    if limit is None:
        return nullcontext()
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"max_image_pixels={limit!r}: a number of pixels >= 1 (null: PIL's limit)")
    return pil_pixel_limit(limit)


@contextmanager
def pil_pixel_limit(limit: int):
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice it
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit / 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@contextmanager
def json_array(path: Path):
    """A JSON array written as it grows: yields `write(items)`, which appends them; the array
    is closed whatever stops the run, so the file holds what was found so far. One image's
    results in memory at a time: as one list and one string, 20,000 images' (100 detections
    each) took 2.1 GB, and that grows with the images."""
    with path.open("w") as file:
        file.write("[")
        separator = ""

        def write(items) -> None:
            nonlocal separator
            for item in items:
                file.write(separator + json.dumps(item))
                separator = ", "  # json.dumps' own, as the file had when written at once

        try:
            yield write
        finally:
            file.write("]")


def load_predictor(cfg) -> Predictor:
    """The checkpoint (`backend=torch`, `ckpt_path=`) or an exported file (`backend=onnxruntime`,
    `openvino` or `pt2`, `model_file=`); settings that an exported file has baked in are
    refused, named."""
    backend, exported = cfg.get("backend", "torch"), cfg.get("model_file")
    if backend == "torch":
        if exported:
            raise ValueError(
                f"model_file={exported!r} is an exported file: backend="
                f"{' or '.join(EXPORTED_BACKENDS)} runs it (backend=torch reads ckpt_path=)"
            )
        if not cfg.ckpt_path:
            raise ValueError("ckpt_path=<a training checkpoint> is needed (backend=torch)")
        return Predictor.from_checkpoint(
            cfg.ckpt_path,
            cfg.trainer.accelerator,
            cfg.score_thresh,
            cfg.nms_thresh,
            cfg.max_detections,
            cfg.tta,
        )
    if backend not in EXPORTED_BACKENDS:
        raise ValueError(f"backend={backend!r}: one of torch, {', '.join(EXPORTED_BACKENDS)}")
    if not exported:
        raise ValueError(f"backend={backend} runs an exported file: give model_file=<the file>")
    baked = [key for key in ("score_thresh", "nms_thresh", "tta") if cfg[key] is not None]
    if baked or cfg.ckpt_path:
        given = baked + (["ckpt_path"] if cfg.ckpt_path else [])
        raise ValueError(
            f"{', '.join(given)}: {exported} has its post-processing and weights baked in; "
            "export.py sets them (score_thresh=, nms_thresh=; no test-time augmentation)"
        )
    if cfg.trainer.accelerator == "gpu":
        raise ValueError(f"backend={backend} runs on the CPU: device=cpu or device=auto")
    if backend in ("onnxruntime", "openvino"):
        require_extra(f"predict.py backend={backend}", (backend,), "export")
    return Predictor.from_exported(exported, backend, cfg.max_detections)


def check_settings(cfg) -> None:
    """predict.py's own numbers, checked before the model loads (the post-processing's are
    checked by the Predictor, `check_post_processing`)."""
    check_number("batch_size", cfg.batch_size, 1, integer=True)
    check_number("draw_thresh", cfg.draw_thresh, 0, 1)


def tile_settings(cfg) -> tuple[int, float] | None:
    """(`tile`, `tile_overlap`): a tile's side in pixels and the share of it that neighbours
    share; None without tiles (`tile=null`)."""
    tile, overlap = cfg.get("tile"), cfg.get("tile_overlap", 0.2)
    if tile is None:
        return None
    if not isinstance(tile, int) or tile < 32:
        raise ValueError(f"tile={tile!r}: a tile's side in pixels, at least 32 (null: no tiles)")
    if not isinstance(overlap, (int, float)) or not 0 <= overlap <= 0.75:
        raise ValueError(f"tile_overlap={overlap!r}: the share of a tile neighbours share, 0..0.75")
    return tile, overlap


def detector(cfg, predictor: Predictor, tiles: tuple[int, float] | None):
    """-> (prepare, detect): `prepare(image)` makes the model's input from an image (PIL), where
    reading threads call it (`Predictor.prepare`); `detect(images, prepared)` -> their
    detections: the predictor's on the prepared inputs, or with `tiles` (`tile_settings`;
    `prepare` None: the crops are cut from the images) those on overlapping tiles merged with
    the whole image's (`inference.tiles`)."""
    if tiles is None:
        return predictor.prepare, lambda images, prepared: predictor.detect(prepared)
    tile, overlap = tiles
    # the merge keeps as many as one image's detections: max_detections, else the checkpoint's
    # (an exported file's graph holds its own count: 100)
    model = predictor.model
    own = model.roi_heads.detections_per_img if isinstance(model, torch.nn.Module) else 100
    most = cfg.max_detections or own

    def detect(images: list, prepared: list) -> list[dict]:
        found = []
        for image in images:
            # a bar of its tiles where an image takes long (a 196-megapixel image's tiles take
            # 43 s on 2 cores, the images' bar still at 0): shown after 5 s (a 12-megapixel
            # photo's take 2.3 s on 2 cores: no bar that blinks), gone when done
            with tqdm(unit="tile", desc="tiles", leave=False, delay=5) as tiles_done:
                found.append(
                    detect_tiled(predictor, image, tile, overlap, cfg.batch_size, most, tiles_done)
                )
        return found

    return None, detect


# threads that read (decode, resize) the next batch's images and write the last batch's
# pictures while a batch is detected: PIL and torch work without the GIL. A 12 MP photo takes
# 81 ms to decode, 48 to resize and 73 to draw and encode on a 2-core CPU; in the detecting
# thread they left a GPU idle most of the time (bench/README.md, "predict.py on large photos")
IO_THREADS = min(8, os.cpu_count() or 1)


class Read(NamedTuple):
    """One input file: its index, the image (PIL, upright RGB) and the model's input made from
    it (`Predictor.prepare`, where asked for), or why it could not be read."""

    index: int
    image: Image.Image | None = None
    prepared: tuple | None = None
    problem: str | None = None


def read_ahead(pool: ThreadPoolExecutor, files: list[Path], batches: list[range], prepare=None):
    """Each batch's `Read`s, its files read (and `prepare`d: `Predictor.prepare_file`) by
    `pool`'s threads while the batch before it is detected."""

    def submit(batch: range) -> list:
        return [pool.submit(read_image, files, index, prepare) for index in batch]

    upcoming = submit(batches[0]) if batches else []
    for following in [*batches[1:], None]:
        current, upcoming = upcoming, submit(following) if following else []
        yield [read.result() for read in current]


def read_image(files: list[Path], index: int, prepare=None) -> Read:
    try:
        data = files[index].read_bytes()
        image = open_image(io.BytesIO(data))  # (the picture is drawn on the whole image)
        prepared = prepare(data, image) if prepare else None
    except UNREADABLE_IMAGE as err:
        problem = f"{files[index]}: {unreadable(err)}"
        if isinstance(err, Image.DecompressionBombError):
            problem += " (max_image_pixels= reads larger images)"
        return Read(index, problem=problem)
    return Read(index, image, prepared)


def finished(pending: deque, waiting: int = 0) -> int:
    """Waits for the oldest of the `pending` pictures (futures of their drawn counts) until at
    most `waiting` are left; returns the detections they drew."""
    drawn = 0
    while len(pending) > waiting:
        drawn += pending.popleft().result()
    return drawn


def save_picture(image, detection: dict, predictor, draw_thresh: float, path: Path) -> int:
    """The image with its detections scoring at least `draw_thresh`, as a JPEG at `path`;
    returns how many were drawn."""
    drawn, count = annotated(image, detection, predictor, draw_thresh)
    Image.fromarray(drawn).save(path, format="JPEG", quality=92)
    return count


def annotated(image, detection: dict, predictor, draw_thresh: float) -> tuple[np.ndarray, int]:
    """The image (PIL) with its detections scoring at least `draw_thresh` drawn -> uint8
    (H, W, 3) array, how many were drawn."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    drawn = draw_detections(
        pixels, detection, class_names=predictor.class_names, min_score=draw_thresh
    )
    return drawn.permute(1, 2, 0).numpy(), int((detection["scores"] >= draw_thresh).sum())


def predict_video(cfg) -> dict:
    """predict.py input=<a video file>: an annotated video and detections.jsonl, one line per
    frame detected ({"frame", "time_s", "detections": COCO-style dicts}), every `stride`-th
    frame (the video keeps their timing: fps / stride). Frames FFmpeg cannot decode are
    skipped and listed at the end; the lines and the video so far are kept whatever stops the
    run. Returns a small report."""
    require_extra("a video input", ("av",), "video")
    from frcnn.inference import video

    source = Path(cfg.input).expanduser()
    stride = cfg.get("stride", 1)
    check_number("stride", stride, 1, integer=True)  # (every stride-th frame)
    info = video.probe(source)
    output, movie = video_outputs(cfg.output, source)
    check_settings(cfg)
    tiles = tile_settings(cfg)  # (both checked before the model loads)
    predictor = load_predictor(cfg)
    prepare, detect = detector(cfg, predictor, tiles)
    output.mkdir(parents=True, exist_ok=True)
    lines_path = output / "detections.jsonl"
    tally = Tally()
    total = -(-info.frames // stride) if info.frames else None
    frames = video.read_frames(source, stride, tally.skipped)
    with (
        stop_on_sigterm(f"{lines_path} holds the frames done so far"),
        lines_path.open("w") as lines,
        video.video_writer(movie, info.fps / stride, info.width, info.height) as write,
        tqdm(total=total, unit="frame", desc="predict") as progress,
        ThreadPoolExecutor(IO_THREADS) as pool,
        ThreadPoolExecutor(1) as encoder,  # (one thread: the frames in order)
    ):
        writing = deque()  # each frame's drawn count, to come
        for batch in frames_ahead(pool, frames, cfg.batch_size, prepare):
            found = detect([frame.image for frame, _ in batch], [p for _, p in batch])
            for (frame, _), detection in zip(batch, found, strict=True):
                picture = pool.submit(annotated, frame.image, detection, predictor, cfg.draw_thresh)
                writing.append(encoder.submit(encode, write, picture, frame.time_s))
                line = frame_line(frame, detection, predictor, source.name)
                lines.write(json.dumps(line) + "\n")
                tally.add(line["detections"])
            tally.drawn += finished(writing, cfg.batch_size)  # at most a batch waits
            progress.update(len(batch))
        tally.drawn += finished(writing)
    log.info("\n".join(video_summary_lines(cfg, tally, info.rotation, movie, lines_path)))
    return {"frames": tally.done, "detections": tally.found, "undecodable": tally.skipped}


def frames_ahead(pool: ThreadPoolExecutor, frames: Iterator, size: int, prepare=None):
    """Batches of `size` (frame, the model's input made from it by `prepare`, or None) pairs of
    `frames` (a video's `Frame`s, decoded in order): the next batch decoded and prepared by one
    of `pool`'s threads while a batch is detected."""

    def take() -> list[tuple]:
        return [
            (frame, prepare(frame.image) if prepare else None)
            for frame in itertools.islice(frames, size)
        ]

    upcoming = pool.submit(take)
    while batch := upcoming.result():
        upcoming = pool.submit(take)  # (one at a time: the decoder is not shared)
        yield batch


def encode(write, picture: Future, time_s: float) -> int:
    """Writes a frame's picture (`annotated`, drawn by another thread) to the video at its time
    (s); returns how many detections it shows."""
    pixels, drawn = picture.result()
    write(pixels, time_s)
    return drawn


def video_outputs(setting: str, source: Path) -> tuple[Path, Path]:
    """The output folder (`output_folder`) and the annotated video's path in it, named after
    `source`; refused where it would be the input itself."""
    output = output_folder(setting)
    movie = output / f"{output_names([source])[0].removesuffix('.jpg')}.mp4"
    if movie == source.resolve():
        raise ValueError(f"output={setting!r}: the annotated video would overwrite the input")
    return output, movie


def frame_line(frame, detection: dict, predictor, source_name: str) -> dict:
    """A frame's line of detections.jsonl: its index, time (s) and COCO-style detections
    (without image_id and file_name: the frame's index says which)."""
    results = predictor.coco_results(detection, frame.index, source_name)
    for result in results:
        del result["image_id"], result["file_name"]
    return {"frame": frame.index, "time_s": round(frame.time_s, 4), "detections": results}


def summary_lines(cfg, tally: Tally, json_path: Path, seconds: float) -> list[str]:
    """The end of a run on image files."""
    rate = tally.done / max(seconds, 1e-9)
    lines = [
        f"{counted(tally.done, 'image')} in {seconds:.1f} s ({rate:.1f} images/s), "
        f"{counted(tally.found, 'detection')} -> {json_path.parent}",
        f"  pictures: {counted(tally.drawn, 'detection')} drawn (scoring >= "
        f"draw_thresh={cfg.draw_thresh})",
        f"  COCO results: {json_path} (all {tally.found})",
        *nothing_drawn(tally, cfg.draw_thresh, "the pictures show"),
    ]
    if tally.skipped:
        lines.append(f"  {counted(len(tally.skipped), 'unreadable file')} skipped:")
        lines += [f"    {problem}" for problem in tally.skipped]
    return lines


def video_summary_lines(cfg, tally: Tally, rotation: int, movie: Path, lines: Path) -> list[str]:
    """The end of a run on a video (`rotation`: the quarter turns its frames were stood up by,
    in degrees counter-clockwise)."""
    summary = [
        f"{counted(tally.done, 'frame')} (every {cfg.get('stride', 1)}), "
        f"{counted(tally.found, 'detection')} -> {movie.parent}",
        f"  video: {movie} ({counted(tally.drawn, 'detection')} drawn, scoring >= "
        f"draw_thresh={cfg.draw_thresh})",
        f"  detections: {lines} (a JSON line per frame)",
    ]
    if rotation:
        turn = {90: "90 degrees counter-clockwise", 180: "180 degrees", 270: "90 degrees clockwise"}
        summary.append(
            f"  frames turned {turn[rotation]} to stand upright, as the video's display "
            "matrix says: the boxes are in the upright frames' pixels"
        )
    summary += nothing_drawn(tally, cfg.draw_thresh, "the video shows")
    return summary + [f"  skipped, undecodable: {problem}" for problem in tally.skipped]


def nothing_drawn(tally: Tally, draw_thresh: float, output_shows: str) -> list[str]:
    """For a run whose detections all scored below `draw_thresh`, a line that says so: its
    output (`output_shows`: "the pictures show") shows no boxes, and which threshold would
    draw the best."""
    if not tally.found or tally.drawn:
        return []
    return [
        f"  No detection scored {draw_thresh} or more (the best {tally.best:.3f}): "
        f"{output_shows} no boxes; draw_thresh={tally.best:.2f} would draw the best ones"
    ]
