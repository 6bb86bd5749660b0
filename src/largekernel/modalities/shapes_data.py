"""Labelled 3-D shapes from trimesh primitives, written as real mesh / point files (tests and demos).

Each class is one primitive (box, cone, capsule, cylinder, sphere, torus, annulus) with a random
size and aspect, a random rotation about the z (up) axis plus a small tilt, and Gaussian vertex
noise. Formats: `off` / `ply` meshes or `mixed` (off, ply, obj, stl in turn) in the ModelNet40
mesh layout `OUT/<class>/train|test/<class>_NNNN.<ext>`, or `txt`: the ModelNet40 resampled
layout (`shape_names.txt`, `shapes_train.txt`, `shapes_test.txt`, `OUT/<class>/<class>_NNNN.txt`
with `x,y,z,nx,ny,nz` rows).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CLASSES = ("annulus", "box", "capsule", "cone", "cylinder", "sphere", "torus")
FORMATS = ("off", "ply", "mixed", "txt")
MIXED = ("off", "ply", "obj", "stl")
TXT_POINTS = 2048


def make_shape(name: str, rng: np.random.Generator):
    """One random primitive of class `name` (a trimesh.Trimesh), centred near the origin."""
    import trimesh
    from trimesh import creation

    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if name == "box":
        mesh = creation.box(extents=[u(0.6, 1.6), u(0.6, 1.6), u(0.6, 1.6)])
    elif name == "sphere":
        mesh = creation.icosphere(subdivisions=2, radius=u(0.5, 1.0))
        mesh.apply_scale([1.0, 1.0, u(0.8, 1.2)])
    elif name == "cylinder":
        mesh = creation.cylinder(radius=u(0.3, 0.6), height=u(0.8, 1.8), sections=24)
    elif name == "cone":
        mesh = creation.cone(radius=u(0.4, 0.8), height=u(0.8, 1.6), sections=24)
        mesh.apply_translation([0.0, 0.0, -mesh.centroid[2]])
    elif name == "capsule":
        mesh = creation.capsule(height=u(0.6, 1.4), radius=u(0.25, 0.45), count=[16, 16])
    elif name == "torus":
        major = u(0.5, 0.8)
        mesh = creation.torus(major_radius=major, minor_radius=major * u(0.2, 0.4),
                              major_sections=24, minor_sections=12)
    elif name == "annulus":
        r_max = u(0.6, 1.0)
        mesh = creation.annulus(r_min=r_max * u(0.5, 0.75), r_max=r_max, height=u(0.2, 0.5),
                                sections=24)
    else:
        raise ValueError(f"unknown shape class {name!r}; classes: {', '.join(CLASSES)}")
    tilt = trimesh.transformations.rotation_matrix(u(-0.3, 0.3), [1.0, 0.0, 0.0])
    yaw = trimesh.transformations.rotation_matrix(u(0, 2 * math.pi), [0.0, 0.0, 1.0])
    mesh.apply_transform(yaw @ tilt)
    mesh.vertices = mesh.vertices + rng.normal(0.0, 0.01, mesh.vertices.shape)
    return mesh


def make_shapes(out: str | Path, per_class: int = 20, seed: int = 0, fmt: str = "off",
                test_fraction: float = 0.25) -> Path:
    """Write `per_class` shapes of each class (round(test_fraction * per_class), at least 1, go to
    the test split) and return the output folder."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if per_class < 2:
        raise ValueError(f"per_class={per_class}: need at least 2 (one train, one test) per class")
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_test = min(max(round(test_fraction * per_class), 1), per_class - 1)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for name in CLASSES:
        for i in range(per_class):
            split = "test" if i >= per_class - n_test else "train"
            mesh = make_shape(name, rng)
            stem = f"{name}_{i + 1:04d}"
            if fmt == "txt":
                _write_txt(mesh, out / name / f"{stem}.txt", rng)
                lists[split].append(stem)
                continue
            ext = MIXED[i % len(MIXED)] if fmt == "mixed" else fmt
            folder = out / name / split
            folder.mkdir(parents=True, exist_ok=True)
            mesh.export(folder / f"{stem}.{ext}")
    if fmt == "txt":
        (out / "shape_names.txt").write_text("".join(f"{c}\n" for c in CLASSES))
        for split, ids in lists.items():
            (out / f"shapes_{split}.txt").write_text("".join(f"{s}\n" for s in ids))
    return out


def _write_txt(mesh, path: Path, rng: np.random.Generator) -> None:
    """Surface samples with their face normals as comma-separated x,y,z,nx,ny,nz rows."""
    import trimesh

    path.parent.mkdir(parents=True, exist_ok=True)
    points, faces = trimesh.sample.sample_surface(mesh, TXT_POINTS, seed=int(rng.integers(1 << 31)))
    rows = np.concatenate([points, mesh.face_normals[faces]], axis=1)
    np.savetxt(path, rows, fmt="%.6f", delimiter=",")
