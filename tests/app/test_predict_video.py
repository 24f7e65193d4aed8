"""predict.py on a video file: an annotated video and a JSON line per frame, every stride-th."""

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from frcnn.data.synthetic import draw_sample
from frcnn.inference.predictor import Predictor
from tests.app.helpers import ROOT, process_env, run

FPS, FRAMES, WIDTH, HEIGHT = 8, 10, 150, 110


def write_clip(path, frames: int = FRAMES, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """A clip of synthetic scenes, a new one every 4 frames, written with PyAV directly (MPEG-4
    part 2)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for index in range(frames):
            scene = draw_sample(2, index // 4, 6, 200, 240).image.resize(size)
            frame = av.VideoFrame.from_ndarray(np.asarray(scene), format="rgb24")
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
    # in order (the frames are drawn and encoded beside the detection): each is nearest to
    # its own input frame of scenes 0, 0, 1, 2 (frames 0, 3, 6, 9)
    scenes = [np.asarray(frames[i][0], float) for i in (0, 6, 9)]
    nearest = [
        int(np.argmin([np.abs(np.asarray(image, float) - scene).mean() for scene in scenes]))
        for image, _ in annotated
    ]
    assert nearest == [0, 0, 1, 2]
    with av.open(str(out / "clip.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(FPS, 3)


def test_sigterm_stops_a_video_with_the_frames_so_far_in_both_outputs(trained, tmp_path):
    """A real process stopped by SIGTERM while it works through 400 frames: exit 143, a
    detections.jsonl of the first frames, and an annotated video that plays and holds each of
    them (the frames still being drawn or encoded are finished first)."""
    _, run_dir = trained
    clip, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_clip(clip, 400, (64, 48))
    args = [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={clip}", f"output={out}",
        "device=cpu", "batch_size=2", "score_thresh=0.0", f"paths.log_dir={tmp_path / 'logs'}",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "predict.py"), *args], cwd=ROOT, env=process_env(),
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


def test_a_file_that_is_no_video_is_refused_by_name(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(AssertionError, match=r"clip.mp4'? cannot be read as a video"):
        run("predict.py", "ckpt_path=x.ckpt", f"input={tmp_path / 'clip.mp4'}", "device=cpu",
            log_dir=tmp_path / "logs")  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stride=0", r"stride=0: a whole number >= 1"),
        ("stride=1.5", r"stride=1.5: a whole number >= 1"),
        # the annotated video is named after the input: into the input's own folder, it would
        # be written over the video being read
        ("output={tmp}", r"output=.*: the annotated video would overwrite the input"),
    ],
)
def test_bad_video_settings_are_refused_before_the_checkpoint_loads(tmp_path, override, message):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    args = [f"input={clip}", override.format(tmp=tmp_path), "device=cpu"]
    with pytest.raises(AssertionError, match=message):
        run("predict.py", "ckpt_path=x.ckpt", *args, log_dir=tmp_path / "logs")
    assert clip.stat().st_size > 0 and len(decoded(clip)) == FRAMES


def test_without_pyav_the_message_names_the_video_extra(monkeypatch):
    from frcnn.app.predict import require_video_extra

    monkeypatch.setitem(sys.modules, "av", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"uv sync --extra video"):
        require_video_extra()
