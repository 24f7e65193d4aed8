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

from frcnn.checks import path_of

# containers (MP4, QuickTime) whose index of the frames is written at the end, as recorders do
INDEX_AT_THE_END = {".mp4", ".m4v", ".mov"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv"}
# H.264 where this FFmpeg has the encoder (PyAV's wheels do), else MPEG-4 part 2, which any
# FFmpeg encodes; both play in browsers and players as .mp4
CODECS = ("libx264", "mpeg4")
# the H.264 encoder's speed: 34-37 ms a 1080p frame on 2 cores, against 73-79 ms with its
# default ("medium"), when encoding was about half of predict.py's time on a video
# (bench/README.md, "predict.py on large photos")
ENCODER_PRESET = "veryfast"


# a display matrix's quarter turns counter-clockwise -> PIL's transpose that makes them
TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


class Frame(NamedTuple):
    index: int  # in the video, from 0
    time_s: float  # its presentation time, seconds from the start
    image: Image.Image  # RGB, upright as players show it (`upright`)


class VideoInfo(NamedTuple):
    fps: Fraction  # frames per second
    frames: int  # as the container says, else its length x fps (Matroska, WebM); 0: unknown
    width: int  # of the upright frames
    height: int
    rotation: int  # degrees counter-clockwise the frames are turned to stand upright: 0-270


def is_video(spec: str) -> bool:
    """Whether `spec` (predict.py's `input`) names a video file (by its suffix)."""
    path = path_of("input", spec)
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def probe(path: Path) -> VideoInfo:
    """The first video stream's rate, frame count, upright size and rotation (its first frame
    decoded); a file PyAV cannot read as a video is refused, named."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"input={str(path)!r} has no video stream{cut_short(path)}")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate
            if not fps:
                raise ValueError(f"input={str(path)!r}: its video stream has no frame rate")
            first = next(decoded_frames(container, stream, []), None)
            if first is None:
                raise ValueError(f"input={str(path)!r}: no frame of its video stream decodes")
            turns = quarter_turns(first)
            size = (first.height, first.width) if turns % 2 else (first.width, first.height)
            frames = stream.frames or round(duration_s(container, stream) * fps)
            return VideoInfo(Fraction(fps), frames, *size, 90 * turns)
    except av.error.FFmpegError as err:
        hint = cut_short(path) if isinstance(err, av.error.InvalidDataError) else ""
        raise ValueError(f"input={str(path)!r} cannot be read as a video ({err}){hint}") from None


def cut_short(path: Path) -> str:
    """What a file that FFmpeg finds no video in may have lost, where its format keeps the
    index of its frames at its end: FFmpeg's own message does not say."""
    if path.suffix.lower() not in INDEX_AT_THE_END:
        return ""
    return (
        f"; if it was cut short (an unfinished download or recording), a {path.suffix} has "
        "lost the index of its frames, written at its end"
    )


def read_frames(path: Path, stride: int, undecodable: list[str]) -> Iterator[Frame]:
    """Every `stride`-th frame of the first video stream (0, stride, 2 stride, ...), in order,
    upright.

    A packet FFmpeg cannot decode (a damaged file) is skipped and described in `undecodable`;
    the frames around it still come. Frames that end a second or more before the file says
    it does (a recording or download cut short, damage the demuxer stops at, which FFmpeg
    passes over in silence) are described there too.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frames decoded on several threads
        fps = stream.average_rate or stream.guessed_rate
        end = 0.0  # where the frames so far end, s
        for index, frame in enumerate(decoded_frames(container, stream, undecodable)):
            time_s = float(frame.time) if frame.time is not None else index / fps
            end = time_s + 1 / fps
            if index % stride == 0:
                yield Frame(index, time_s, upright(frame))
        length = duration_s(container, stream)
        if length - end >= 1.0:
            undecodable.append(
                f"the frames end at {end:.1f} s, the file says it lasts {length:.1f} s: the rest "
                "could not be read (a file cut short, or damaged)"
            )


def duration_s(container, stream) -> float:
    """The video stream's length as the file states it, seconds (the container's where the
    stream has none, as in Matroska); 0 where neither is known."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else 0.0  # (FFmpeg's µs)


def decoded_frames(container, stream, undecodable: list[str]) -> Iterator:
    """The stream's frames (PyAV's) in order; the packets FFmpeg cannot decode are skipped and
    described in `undecodable`."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError as err:
            undecodable.append(f"a packet at {packet.pts} ({err})")


def upright(frame) -> Image.Image:
    """A decoded frame as an RGB image turned as its display matrix says: a phone's portrait
    video is stored landscape, with the turn players make (as EXIF orientation does for
    photos)."""
    image = frame.to_image()
    turns = quarter_turns(frame)
    return image.transpose(TURNS[turns]) if turns else image


def quarter_turns(frame) -> int:
    """The quarter turns counter-clockwise (0-3) that stand a decoded frame upright: its display
    matrix's rotation, to the nearest quarter turn as FFmpeg's command line takes it."""
    return round(frame.rotation / 90) % 4


@contextmanager
def video_writer(path: Path, fps: Fraction, width: int, height: int):
    """An .mp4 file at `path`; yields write(rgb: uint8 (height, width, 3) array, time_s): each
    frame at its time in the input, seconds (the first frame written starts the file), on
    ticks of 1 / `fps`: a variable frame rate, or a gap where frames did not decode, plays as
    in the input. Every frame written is in the file, which plays, however the block ends (no
    file if none was)."""
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
        start, last = None, -1  # the first frame's time (s), the last frame's tick

        def write(rgb: np.ndarray, time_s: float) -> None:
            nonlocal start, last
            padded = np.zeros((stream.height, stream.width, 3), np.uint8)
            padded[: rgb.shape[0], : rgb.shape[1]] = rgb
            frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
            start = time_s if start is None else start
            # never two frames on one tick: the encoder needs times that go forward
            last = frame.pts = max(last + 1, round((time_s - start) * fps))
            frame.time_base = 1 / fps
            container.mux(stream.encode(frame))

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
