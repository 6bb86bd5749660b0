"""Frame decoding with PyAV for the video variants of the wild: late frames, rotation, VFR, no video.

- Frames late in a file are reached by seeking to the keyframe before them (the frame's presentation
  time comes from the packets, read without decoding), not by decoding everything from the start.
  Frame i is the i-th frame in presentation order, so variable-frame-rate files index like any other.
- Phone videos store portrait footage as landscape frames plus a display matrix (MP4 `tkhd`); the
  frames are turned upright as players show them.
- A file without a video stream (an audio track in a video container) is named as such.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SEEK_AFTER = 48  # frames: nearer the start, decoding from it is as cheap as seeking
RESEEK_GAP = 48  # frames between wanted ones beyond which a new seek is cheaper than decoding on


def video_stream(container, path: str | Path):
    """The first video stream; ValueError naming the file (and what it holds) when there is none."""
    if container.streams.video:
        return container.streams.video[0]
    audio = len(container.streams.audio)
    holds = (f"only audio ({audio} audio stream{'s' if audio != 1 else ''})" if audio
             else "no streams it can read")
    raise ValueError(f"{path}: the file has no video stream, it holds {holds}; pass its audio to the audio "
                     "modality (e.g. ffmpeg -i IN -vn OUT.wav) or use a file with video")


def upright(frame) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a decoded frame, turned by its display matrix as players show it."""
    arr = frame.to_ndarray(format="rgb24")
    rotation = getattr(frame, "rotation", 0) or 0  # counter-clockwise degrees; INT_MIN when unset
    quarter = round(rotation / 90) % 4 if abs(rotation) <= 360 else 0
    return np.ascontiguousarray(np.rot90(arr, quarter)) if quarter else arr


def _presentation_times(container, stream) -> list[int]:
    """Sorted presentation timestamps of the stream's frames, from its packets (no decoding);
    empty when some are missing or repeated."""
    times = [p.pts for p in container.demux(stream) if p.size > 0]
    usable = times and None not in times and len(set(times)) == len(times)  # else: decode in order
    return sorted(times) if usable else []


def decode_frames(path: str | Path, wanted: set[int], av) -> tuple[dict[int, np.ndarray], int, int]:
    """(wanted frames as RGB uint8, frames seen, frames decoded): seeking when the first wanted
    frame is late in the file, decoding from the start otherwise (or when the file has no usable
    timestamps)."""
    with av.open(str(path)) as container:
        stream = video_stream(container, path)
        if min(wanted) < SEEK_AFTER:
            return _sequential(container, stream, wanted)
        times = _presentation_times(container, stream)
        index = {t: i for i, t in enumerate(times)}
        frames: dict[int, np.ndarray] = {}
        decoded = 0
        todo = sorted(w for w in wanted if w < len(times))
        while todo and len(todo) + len(frames) == len(wanted):
            target = todo[0]
            container.seek(times[target], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                decoded += 1
                i = index.get(frame.pts)
                if i is None or i < target:
                    continue
                if i in wanted:
                    frames[i] = upright(frame)
                todo = [w for w in todo if w not in frames and w > i]
                if not todo or todo[0] - i > RESEEK_GAP:
                    break
            if todo and todo[0] == target:  # the stream ended before the frame: seeking failed
                break
        if len(frames) < len(wanted):  # no usable timestamps, or a seek that missed: from the start
            container.seek(0)
            return _sequential(container, stream, wanted)
        return frames, len(times), decoded


def _sequential(container, stream, wanted: set[int]) -> tuple[dict[int, np.ndarray], int, int]:
    frames: dict[int, np.ndarray] = {}
    last, seen = max(wanted), 0
    for i, frame in enumerate(container.decode(stream)):
        seen = i + 1
        if i in wanted:
            frames[i] = upright(frame)
        if i >= last:
            break
    return frames, seen, seen
