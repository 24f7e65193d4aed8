"""predict.py on a video file: an annotated video and a JSON line per frame, every stride-th."""

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn.app.predict import Tally, video_summary_lines
from frcnn.data.synthetic import draw_sample
from frcnn.inference.predictor import Predictor
from tests.app.helpers import ROOT, process_env, run

FPS, FRAMES, WIDTH, HEIGHT = 8, 10, 150, 110


def scene(index: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """A clip's frame as it was drawn: a new synthetic scene every 4 frames."""
    return draw_sample(2, index // 4, 6, 200, 240).image.resize(size)


def write_clip(path, frames: int = FRAMES, size=(WIDTH, HEIGHT), rotation: int = 0) -> None:
    """A clip of `scene`s written with PyAV directly (MPEG-4 part 2); with a `rotation`, stored
    turned clockwise by that many degrees, with the display matrix that turns it back (as
    phones store a portrait video)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stored = size[::-1] if rotation % 180 else size
        stream.width, stream.height, stream.pix_fmt = *stored, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)  # (counter-clockwise, as FFmpeg's)
        for index in range(frames):
            turned = scene(index, size).rotate(-rotation, expand=True)
            frame = av.VideoFrame.from_ndarray(np.asarray(turned), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def decoded(path) -> list:
    """Every frame of a video as (PIL image, time in seconds), decoded by PyAV here."""
    with av.open(str(path)) as container:
        return [(frame.to_image(), frame.time) for frame in container.decode(video=0)]


def test_a_video_gives_an_annotated_video_and_a_line_per_frame(trained, tmp_path):
    """stride=3 of 10 frames: frames 0, 3, 6, 9 detected, their times kept, and each line holds
    the checkpoint's detections of that decoded frame (as predict.py finds them on images)."""
    _, run_dir = trained
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    args = [f"ckpt_path={checkpoint}", f"input={clip}", f"output={out}", "stride=3"]
    result = run("predict.py", *args, "device=cpu", "batch_size=3", log_dir=tmp_path / "logs")
    assert "4 frames (every 3)" in result.stdout + result.stderr
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    frames = decoded(clip)
    assert [line["frame"] for line in lines] == [0, 3, 6, 9]
    assert [line["time_s"] for line in lines] == [pytest.approx(i / FPS) for i in (0, 3, 6, 9)]
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    for line in lines:
        expected = predictor(frames[line["frame"]][0])
        boxes, scores = expected["boxes"].tolist(), expected["scores"].tolist()
        wanted = zip(boxes, scores, expected["names"], strict=True)
        for found, ((x0, y0, x1, y1), score, name) in zip(line["detections"], wanted, strict=True):
            assert found["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.006)
            assert found["score"] == pytest.approx(score, abs=1e-5)
            assert found["category_name"] == name
    assert sum(len(line["detections"]) for line in lines) > 0
    annotated = decoded(out / "clip.mp4")
    assert len(annotated) == 4
    assert annotated[0][0].size == (WIDTH, HEIGHT)
    with av.open(str(out / "clip.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(FPS, 3)
    # in order (the frames are drawn and encoded beside the detection): each is nearest to
    # its own input frame of scenes 0, 0, 1, 2 (frames 0, 3, 6, 9)
    assert nearest([image for image, _ in annotated], [frames[i][0] for i in (0, 6, 9)]) == [
        0, 0, 1, 2
    ]  # fmt: skip


def nearest(images: list, references: list) -> list[int]:
    """For each image, the index of the reference it differs least from (mean absolute
    difference of the pixels)."""
    return [
        int(np.argmin([np.abs(np.asarray(image, float) - np.asarray(r, float)).mean()
                       for r in references]))
        for image in images
    ]  # fmt: skip


def test_a_phone_video_stored_turned_is_detected_and_written_upright(trained, tmp_path):
    """A portrait video stored landscape with a display rotation (-90 degrees: shown turned a
    quarter clockwise, as iPhones write it): each frame is detected upright as players show it,
    with the detections of the decoded frame turned so, and the annotated video is upright (no
    display matrix to follow)."""
    _, run_dir = trained
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=6, rotation=-90)  # (an iPhone's, turned clockwise to be shown)
    frames = decoded(clip)
    assert frames[0][0].size == (HEIGHT, WIDTH)  # stored turned: PyAV leaves it so
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    args = [f"ckpt_path={checkpoint}", f"input={clip}", f"output={out}", "batch_size=4"]
    result = run("predict.py", *args, "device=cpu", log_dir=tmp_path / "logs")
    assert "frames turned 90 degrees clockwise to stand upright" in result.stdout + result.stderr
    annotated = [image for image, _ in decoded(out / "clip.mp4")]
    assert [image.size for image in annotated] == [(WIDTH, HEIGHT)] * 6
    # upright: nearest to the scene drawn (0, 0, 0, 0, 1, 1), not to it turned either way
    drawn = [scene(0), scene(4)]
    turned = [image.rotate(angle, expand=True) for image in drawn for angle in (90, -90)]
    assert nearest(annotated, drawn + [image.resize(drawn[0].size) for image in turned]) == [
        0, 0, 0, 0, 1, 1
    ]  # fmt: skip
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert sum(len(line["detections"]) for line in lines) > 0
    for line, (image, _) in zip(lines, frames, strict=True):
        expected = predictor(image.transpose(Image.Transpose.ROTATE_270))  # (counter-clockwise)
        found = torch.tensor([d["bbox"] for d in line["detections"]]).reshape(-1, 4)
        boxes = expected["boxes"]
        wanted = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        torch.testing.assert_close(found, wanted, atol=0.006, rtol=0)  # (xywh, to 0.01 px)
    with av.open(str(out / "clip.mp4")) as container:  # played as written
        assert [frame.rotation for frame in container.decode(video=0)] == [0] * 6


def test_sigterm_stops_a_video_with_the_frames_so_far_in_both_outputs(trained, tmp_path):
    """A real process stopped by SIGTERM while it works through 400 frames: exit 143, a
    detections.jsonl of the first frames, and an annotated video that plays and holds each of
    them (the frames still being drawn or encoded are finished first)."""
    _, run_dir = trained
    clip, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_clip(clip, 400, (64, 48))
    args = [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={clip}", f"output={out}",
        "device=cpu", "batch_size=2", "score_thresh=0.0",
    ]  # fmt: skip
    process = subprocess.Popen(  # from a working folder of its own, on the default paths
        [sys.executable, str(ROOT / "predict.py"), *args], cwd=tmp_path, env=process_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = out / "detections.jsonl"
    deadline = time.monotonic() + 120
    while (not lines.exists() or lines.stat().st_size < 50_000) and time.monotonic() < deadline:
        time.sleep(0.05)  # (a line of up to 100 detections: the file is written in 8 KB blocks)
    process.send_signal(signal.SIGTERM)
    printed, _ = process.communicate(timeout=60)
    assert process.returncode == 143, printed[-3000:]
    assert "predict stopped by SIGTERM" in printed
    done = [json.loads(line)["frame"] for line in lines.read_text().splitlines()]
    assert 2 <= len(done) < 400 and done == list(range(len(done)))
    # a frame whose line SIGTERM cut off may still be in the video
    assert len(done) <= len(decoded(out / "clip.mp4")) <= len(done) + 1
    assert list((tmp_path / "logs" / "predict" / "runs").iterdir())  # its run folder


def test_a_file_that_is_no_video_is_refused_by_name(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(AssertionError, match=r"clip.mp4'? cannot be read as a video"):
        run("predict.py", "ckpt_path=x.ckpt", f"input={tmp_path / 'clip.mp4'}", "device=cpu",
            log_dir=tmp_path / "logs")  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stride=0", r"stride=0: must lie in \[1, inf\)"),
        ("stride=true", r"stride=True: must be an integer in \[1, inf\)"),  # (1 before)
        # the annotated video is named after the input: into the input's own folder, it would
        # be written over the video being read
        ("output={tmp}", r"output=.*: the annotated video would overwrite the input"),
        ("output={tmp}/clip.mp4", r"output=.*clip.mp4' is a file: give a folder"),
    ],
)
def test_bad_video_settings_are_refused_before_the_checkpoint_loads(tmp_path, override, message):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    args = [f"input={clip}", override.format(tmp=tmp_path), "device=cpu"]
    with pytest.raises(AssertionError, match=message):
        run("predict.py", "ckpt_path=x.ckpt", *args, log_dir=tmp_path / "logs")
    assert clip.stat().st_size > 0 and len(decoded(clip)) == FRAMES


def test_the_summary_of_a_video_whose_detections_all_score_below_draw_thresh_says_so():
    """As for images (test_predict): the annotated video shows no boxes, and the summary says
    which threshold would draw the best detections; nothing of the kind where some are drawn."""
    cfg = OmegaConf.create({"stride": 2, "draw_thresh": 0.9})
    movie, lines = Path("out/clip.mp4"), Path("out/detections.jsonl")
    tally = Tally(done=3, found=4, best=0.4271, drawn=0, skipped=["packet 5: damaged"])
    summary = "\n".join(video_summary_lines(cfg, tally, 0, movie, lines))
    assert summary.startswith("3 frames (every 2), 4 detections -> out\n")
    assert (
        "No detection scored 0.9 or more (the best 0.427): the video shows no boxes; "
        "draw_thresh=0.43 would draw the best ones"
    ) in summary
    assert summary.endswith("skipped, undecodable: packet 5: damaged")
    tally.drawn = 1
    assert "No detection scored" not in "\n".join(video_summary_lines(cfg, tally, 0, movie, lines))
