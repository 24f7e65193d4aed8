"""Video decoding and encoding (PyAV) for predict.py: frames, their times, odd sizes."""

from fractions import Fraction

import av
import numpy as np
import pytest

from frcnn.inference.video import encoder, probe, read_frames, video_writer


def test_written_frames_come_back_in_order_with_their_times_every_stride(tmp_path):
    """An odd-sized video (the encoder pads it to even sides with black), 7 frames at 5 fps,
    read back every 3rd: frames 0, 3, 6 at 0, 0.6, 1.2 s, each the grey level it was written
    with (within the codec's loss)."""
    path = tmp_path / "grey.mp4"
    with video_writer(path, Fraction(5), 33, 21) as write:
        for index in range(7):
            write(np.full((21, 33, 3), 30 * index, np.uint8), 3.0 + index / 5)
    info = probe(path)
    assert (info.fps, info.width, info.height) == (5, 34, 22)
    undecodable = []
    frames = list(read_frames(path, 3, undecodable))
    assert [f.index for f in frames] == [0, 3, 6] and not undecodable
    assert [f.time_s for f in frames] == [pytest.approx(t) for t in (0.0, 0.6, 1.2)]
    for frame in frames:
        pixels = np.asarray(frame.image).astype(int)
        assert abs(pixels[:21, :33].mean() - 30 * frame.index) < 3
        assert pixels[21:, :].mean() < 20 and pixels[:, 33:].mean() < 20  # the padding
    if encoder() == "libx264":  # x264 writes its settings into the stream: veryfast's
        settings = path.read_bytes()
        assert b" subme=2 " in settings and b" ref=1 " in settings  # "medium": 7 and 3


def test_frames_keep_their_times_where_the_rate_varies_or_frames_are_missing(tmp_path):
    """Frames written at 1.0, 1.2, 1.6 (a frame missing), 1.83 (off a tick), 1.87 (the same
    nearest tick: the next one) s at 5 fps come back at their times from the first, on the
    nearest 0.2 s ticks."""
    path = tmp_path / "gaps.mp4"
    with video_writer(path, Fraction(5), 32, 24) as write:
        for index, time_s in enumerate([1.0, 1.2, 1.6, 1.83, 1.87]):
            write(np.full((24, 32, 3), 40 * index, np.uint8), time_s)
    times = [frame.time_s for frame in read_frames(path, 1, [])]
    assert times == [pytest.approx(t) for t in (0.0, 0.2, 0.6, 0.8, 1.0)]


def test_a_file_cut_short_is_read_to_its_cut_and_the_rest_named(tmp_path):
    """A Matroska file (its header states the length, 8 s, not the frames) cut at two thirds,
    as a recording or download stopped early: FFmpeg decodes the frames before the cut and
    says nothing; the frames come, and `undecodable` names where they end. The whole file:
    nothing named."""
    whole = tmp_path / "whole.mkv"
    with video_writer(whole, Fraction(5), 32, 24) as write:
        for index in range(40):
            write(np.full((24, 32, 3), 5 * index, np.uint8), index / 5)
    undecodable = []
    assert len(list(read_frames(whole, 1, undecodable))) == 40 and not undecodable
    assert probe(whole).frames == 40  # (Matroska states no count: its length x fps)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    frames = list(read_frames(cut, 1, undecodable))
    assert 10 < len(frames) < 40
    assert undecodable == [
        f"the frames end at {len(frames) / 5:.1f} s, the file says it lasts 8.0 s: the rest "
        "could not be read (a file cut short, or damaged)"
    ]


def test_an_mp4_cut_short_is_refused_saying_why_it_likely_cannot_be_read(tmp_path):
    """An .mp4 keeps the index of its frames at its end (as recorders and this writer write
    it): cut short, FFmpeg finds no data it can read, which alone does not say why."""
    whole = tmp_path / "whole.mp4"
    with video_writer(whole, Fraction(5), 32, 24) as write:
        for index in range(10):
            write(np.full((24, 32, 3), 20 * index, np.uint8), index / 5)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    # (FFmpeg opens this one and finds no stream; others it cannot open: "Invalid data")
    lost = r"cut\.mp4' has no video stream; if it was cut short \(an unfinished download or "
    with pytest.raises(ValueError, match=lost + r"recording\), a \.mp4 has lost the index"):
        probe(cut)


def test_a_file_without_a_video_stream_is_refused(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(ValueError, match="has no video stream"):
        probe(path)
