"""Videos as phones, cameras and editors write them: rotation, VFR, odd sizes, audio-only, short, long."""
from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from largekernel.modalities import video_io  # noqa: E402
from largekernel.modalities.video import count_frames, read_frames  # noqa: E402


def numbered(i: int, h: int = 16, w: int = 16) -> np.ndarray:
    """A frame whose grey level encodes its index (steps of 8 survive lossy coding)."""
    return np.full((h, w, 3), 8 * (i % 32), np.uint8)


def encode(path, frames, codec="mpeg4", rate=25, pts=None, gop=None, fmt=None, audio=False):
    """Encode RGB frames with PyAV; `pts` in milliseconds gives a variable frame rate."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p" if codec in ("mpeg4", "libx264") else "rgb24" if codec == "png" else "yuv444p"
        if gop:
            s.codec_context.gop_size = gop
        if pts is not None:
            s.time_base = Fraction(1, 1000)
            s.codec_context.time_base = Fraction(1, 1000)
        if audio:
            a = c.add_stream("aac", rate=16000)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if audio:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
            samples.sample_rate = 16000
            for p in a.encode(samples):
                c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def grey(frames: np.ndarray) -> np.ndarray:
    return np.round(frames[..., 0].reshape(len(frames), -1).mean(1) / 8).astype(int)


def test_late_frames_are_reached_by_seeking_not_decoding_from_the_start(tmp_path):
    path = encode(tmp_path / "long.mp4", [numbered(i) for i in range(400)], gop=20)
    wanted = {380, 384, 388}
    frames, seen, decoded = video_io.decode_frames(path, wanted, av)
    assert seen == 400 and decoded <= 20 + 9  # from the keyframe at 380 (one GOP at most), not 389 frames
    assert [int(round(frames[i][..., 0].mean() / 8)) for i in sorted(wanted)] == [i % 32 for i in sorted(wanted)]
    # clips spread over the file: one seek each
    spread = {100, 101, 300, 301}
    frames, _, decoded = video_io.decode_frames(path, spread, av)
    assert decoded <= 2 * (20 + 2)
    assert {i: int(round(frames[i][..., 0].mean() / 8)) for i in spread} == {i: i % 32 for i in spread}


def test_variable_frame_rate_frames_are_indexed_in_presentation_order(tmp_path):
    pts = np.cumsum(np.r_[0, np.random.default_rng(0).integers(10, 90, 119)]).tolist()  # 11-100 fps
    path = encode(tmp_path / "vfr.mkv", [numbered(i) for i in range(120)], pts=pts, gop=10, fmt="matroska")
    with av.open(str(path)) as c:
        steps = np.diff([f.pts for f in c.decode(video=0)])
    assert len(set(steps.tolist())) > 10  # really variable
    assert count_frames(path) == 120
    sequential = read_frames(path, lambda n: np.arange(n))
    late = read_frames(path, lambda n: np.array([100, 110, 119]))
    assert grey(sequential).tolist() == [i % 32 for i in range(120)]
    assert np.array_equal(late, sequential[[100, 110, 119]])


def _rotate_mp4(path, matrix) -> None:
    """Write the display matrix of the (only) track header, as phones do (ISO 14496-12 `tkhd`)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4
    at += 4 + (32 if data[at] == 1 else 20) + 8 + 8  # version/flags, times and ids, reserved, layer...volume
    data[at:at + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("matrix, top_left_red", [
    ((0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000), True),  # "rotate 90": shown turned clockwise
    ((0, -0x10000, 0, 0x10000, 0, 0, 0, 0, 0x40000000), False),  # "rotate 270"
])
def test_rotation_metadata_turns_frames_upright(tmp_path, matrix, top_left_red):
    frame = np.zeros((16, 32, 3), np.uint8)
    frame[:, :16] = (255, 0, 0)  # left half red, stored landscape
    path = encode(tmp_path / "phone.mp4", [frame] * 3, codec="mpeg4")
    _rotate_mp4(path, matrix)
    out = read_frames(path, lambda n: np.arange(n))
    assert out.shape == (3, 32, 16, 3)  # portrait, as players show it
    top_red = out[0, 4, 8, 0] > 200 and out[0, 4, 8, 1] < 60
    bottom_red = out[0, 28, 8, 0] > 200 and out[0, 28, 8, 1] < 60
    assert (top_red, bottom_red) == (top_left_red, not top_left_red)


def test_odd_frame_sizes(tmp_path):
    frames = [np.full((17, 33, 3), 40 * i, np.uint8) for i in range(3)]
    path = encode(tmp_path / "odd.mkv", frames, codec="ffv1", fmt="matroska")
    out = read_frames(path, lambda n: np.arange(n))
    assert np.array_equal(out, np.stack(frames))  # lossless codec: exactly the frames


def test_audio_only_file_is_named(tmp_path):
    path = tmp_path / "podcast.mp4"
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=16000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 16000
        for p in [*a.encode(samples), *a.encode()]:
            c.mux(p)
    with pytest.raises(ValueError, match=r"podcast\.mp4: the file has no video stream, it holds only audio "
                                         r"\(1 audio stream\); pass its audio to the audio modality"):
        count_frames(path)


def test_video_with_an_audio_track_reads_the_video(tmp_path):
    path = encode(tmp_path / "talk.mp4", [numbered(i) for i in range(5)], audio=True)
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1
    assert grey(read_frames(path, lambda n: np.arange(n))).tolist() == [0, 1, 2, 3, 4]


def test_single_frame_clip(tmp_path):
    path = encode(tmp_path / "still.mp4", [numbered(3)])
    assert count_frames(path) == 1
    out = read_frames(path, lambda n: np.zeros(4, int))  # a 4-frame clip looped from 1 frame
    assert out.shape == (4, 16, 16, 3) and grey(out).tolist() == [3] * 4
