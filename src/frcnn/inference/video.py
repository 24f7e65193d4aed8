"""Video files for predict.py: frames decoded with PyAV, an annotated video encoded with it.

torchvision no longer decodes video (its `io.read_video` was removed in 0.28); PyAV, FFmpeg's
Python binding, is the `video` extra (`av`), which training does not need.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv"}
# H.264 where this FFmpeg has the encoder (PyAV's wheels do), else MPEG-4 part 2, which any
# FFmpeg encodes; both play in browsers and players as .mp4
CODECS = ("libx264", "mpeg4")
# the H.264 encoder's speed: 34-37 ms a 1080p frame on 2 cores, against 73-79 ms with its
# default ("medium"), when encoding was about half of predict.py's time on a video
# (bench/README.md, "predict.py on large photos")
ENCODER_PRESET = "veryfast"


class Frame(NamedTuple):
    index: int  # in the video, from 0
    time_s: float  # its presentation time, seconds from the start
    image: Image.Image  # RGB


class VideoInfo(NamedTuple):
    fps: Fraction  # frames per second
    frames: int  # as the container says; 0 where it does not
    width: int
    height: int


def is_video(spec: str) -> bool:
    """Whether `spec` names a video file (by its suffix)."""
    path = Path(spec).expanduser()
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def probe(path: Path) -> VideoInfo:
    """The first video stream's rate, frame count and size; a file PyAV cannot read as a video
    is refused, named."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"input={str(path)!r} has no video stream")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate
            if not fps:
                raise ValueError(f"input={str(path)!r}: its video stream has no frame rate")
            return VideoInfo(Fraction(fps), stream.frames, stream.width, stream.height)
    except av.error.FFmpegError as err:
        raise ValueError(f"input={str(path)!r} cannot be read as a video ({err})") from None


def read_frames(path: Path, stride: int, undecodable: list[str]) -> Iterator[Frame]:
    """Every `stride`-th frame of the first video stream (0, stride, 2 stride, ...), in order.

    A packet FFmpeg cannot decode (a damaged file) is skipped and described in `undecodable`;
    the frames around it still come.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frames decoded on several threads
        fps = stream.average_rate or stream.guessed_rate
        index = 0
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as err:
                undecodable.append(f"a packet at {packet.pts} ({err})")
                continue
            for frame in decoded:
                if index % stride == 0:
                    time_s = float(frame.time) if frame.time is not None else index / fps
                    yield Frame(index, time_s, frame.to_image())
                index += 1


@contextmanager
def video_writer(path: Path, fps: Fraction, width: int, height: int):
    """An .mp4 file at `path`; yields write(rgb: uint8 (height, width, 3) array). Every frame
    written is in the file, which plays, however the block ends (no file if none was)."""
    import av

    container = av.open(str(path), "w")
    try:
        codec = encoder()
        stream = container.add_stream(codec, rate=fps)
        if codec == "libx264":  # an annotated preview: 2x faster than its default, "medium"
            stream.options = {"preset": ENCODER_PRESET}
        # 4:2:0 chroma needs even sides: an odd one gets a black row or column
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"

        def write(rgb: np.ndarray) -> None:
            padded = np.zeros((stream.height, stream.width, 3), np.uint8)
            padded[: rgb.shape[0], : rgb.shape[1]] = rgb
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))

        try:
            yield write
        finally:
            # the frames the encoder still holds (x264 keeps dozens for its look-ahead and
            # threads), also when the run stops early: a SIGTERM lost them, and under a few
            # dozen frames the file too
            container.mux(stream.encode(None))
    finally:
        container.close()


def encoder() -> str:
    import av

    return next(codec for codec in CODECS if codec in av.codecs_available)
