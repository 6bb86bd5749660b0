"""Synthetic video clips for tests and demos: one moving shape per clip, encoded to real mp4 files
with PyAV. The class is the motion (task "motion", the default) or the shape (task "shape").

motion: classes `down`, `grow`, `shrink`, `up`; each clip draws a random shape (disc, square,
diamond), colours, shaded background, start position and speed. The classes are invariant to
horizontal flips (the training augmentation) and differ only in how frames change over time, so a
model must use the frame order.
shape: classes `cross`, `diamond`, `disc`, `square`, each moving with a random one of the four
motions (drawn larger, so that the shapes stay distinguishable at small frame sizes).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CLASSES = ("down", "grow", "shrink", "up")  # the motion task's classes
SHAPES = ("disc", "square", "diamond")  # the shapes drawn in motion clips
SHAPE_CLASSES = ("cross", "diamond", "disc", "square")  # the shape task's classes
TASKS = {"motion": CLASSES, "shape": SHAPE_CLASSES}


def task_classes(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]


def render_clip(label: str, frames: int, size: int, rng: np.random.Generator,
                task: str = "motion") -> np.ndarray:
    """One clip as uint8 (frames, size, size, 3)."""
    classes = task_classes(task)
    if label not in classes:
        raise ValueError(f"unknown {task} clip class {label!r}; classes: {', '.join(classes)}")
    if task == "motion":
        shape, scale = SHAPES[rng.integers(len(SHAPES))], 1.0
    else:
        shape, label, scale = label, CLASSES[rng.integers(len(CLASSES))], 1.7
    # random hues, one contrast polarity (a bright shape on a dark background): with random polarity
    # a tiny model needs far more clips than a test can afford to learn the shape or the motion
    bg = rng.integers(0, 90, 3)
    fg = rng.integers(160, 256, 3)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    # a random linear shading of the background (so frame borders show in a mosaic)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size
    background = np.clip(bg + 40 * (ramp - ramp.mean())[..., None], 0, 255).astype(np.uint8)
    t = np.linspace(0.0, 1.0, frames)
    if label in ("up", "down"):
        r = np.full(frames, rng.uniform(0.07, 0.11) * scale * size)
        travel = rng.uniform(0.5, 0.65) / scale * size
        cx = np.full(frames, rng.uniform(r[0] + 1, size - r[0] - 1))
        y0 = rng.uniform(r[0] + 1, size - r[0] - 1 - travel)
        cy = y0 + travel * (t if label == "down" else 1 - t)
    else:
        small, big = rng.uniform(0.05, 0.1) * scale * size, rng.uniform(0.25, 0.35) * size
        small = min(small, 0.6 * big)
        r = small + (big - small) * (t if label == "grow" else 1 - t)
        cx = np.full(frames, rng.uniform(big, size - big))
        cy = np.full(frames, rng.uniform(big, size - big))
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        dx, dy = np.abs(xx - cx[i]), np.abs(yy - cy[i])
        mask = {"disc": dx ** 2 + dy ** 2 <= r[i] ** 2, "square": np.maximum(dx, dy) <= r[i] * 0.9,
                "diamond": dx + dy <= r[i] * 1.3,
                "cross": (np.maximum(dx, dy) <= r[i] * 1.2) & (np.minimum(dx, dy) <= r[i] * 0.4)}[shape]
        out[i] = background
        out[i][mask] = fg
    return out


def encoder_name() -> str:
    """libx264 when this PyAV build has it, else mpeg4."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode uint8 (T, H, W, 3) RGB frames (even H and W) to a video file with PyAV."""
    try:
        import av
    except ImportError as e:
        raise ImportError('writing clips needs PyAV: pip install "largekernel[video]"') from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = encoder_name()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"} if codec == "libx264" else {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                   format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clips(out: str | Path, per_class: int = 20, frames: int = 16, size: int = 64,
               seed: int = 0, task: str = "motion") -> Path:
    """OUT/<class>/<NNN>.mp4 and OUT/clips.csv (path,label); returns OUT. task: "motion" (classes
    down/grow/shrink/up) or "shape" (cross/diamond/disc/square)."""
    classes = task_classes(task)
    if size < 16 or size % 2:
        raise ValueError(f"size={size}: clips need an even size >= 16 (the mp4 pixel format halves it)")
    if frames < 2:
        raise ValueError(f"frames={frames}: a motion clip needs at least 2 frames")
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for label in classes:
        for i in range(per_class):
            rel = f"{label}/{i:03d}.mp4"
            write_video(out / rel, render_clip(label, frames, size, rng, task))
            rows.append((rel, label))
    with open(out / "clips.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return out
