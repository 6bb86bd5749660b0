"""The point-cloud modality: meshes and point files -> V rendered views -> UniRepLKNet.

Input per sample: an (N, 3) float tensor of points normalised to the unit sphere. Meshes (.off, .obj,
.ply, .stl) are sampled uniformly on their surface (`mesh_points` points, fixed seed), point files
(.ply vertices, .xyz/.txt/.pts rows `x,y,z[,...]`, .npy/.npz arrays) are read as they are; then
farthest-point sampling keeps `num_points`, and the result is centred and scaled to the unit sphere.

The network (`PointCloudNet`) turns the points into images the backbone reads: per-point features
(Conv1d 3->8, DGCNN edge features over the k nearest neighbours -> 64 channels), an orthographic
projection of each of V fixed views onto an H x W grid with 3x3 splatting (scatter-add), a small conv
decoder to 3 channels, sigmoid and ImageNet normalisation; the backbone (no head) pools each view,
and the head classifies the concatenated views. Every random choice of the augmentation comes from
torch's global RNG, so the engine's per-sample seeding makes runs reproducible.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..engine.classification import Classification
from ..engine.commands import RANDOM_SEED, Command, arg, positive_int
from ..engine.config import TrainConfig, option
from ..engine.data import DataBundle, Skipped
from ..engine.plugin import register_plugin
from ..models.registry import create_model
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD
from .files import Sample, check_classes, file_datasets, one_thread, read_csv
from . import mesh_io


MESH_EXTENSIONS = (".off", ".obj", ".stl", ".ply")
POINT_EXTENSIONS = (".xyz", ".txt", ".pts", ".npy", ".npz")  # and .ply files without faces
EXTENSIONS = MESH_EXTENSIONS + POINT_EXTENSIONS
ROTATIONS = ("up", "so3", "none")
UP_AXES = {"x": (1, 2, 0), "y": (2, 0, 1), "z": (0, 1, 2)}  # (horizontal a, horizontal b, up)
EXTENT = 1.25  # the views show [-EXTENT, EXTENT]^2: the unit sphere fills 80% of the grid
ELEVATION = math.radians(30.0)  # the views look down on the shape by 30 degrees
SPLAT = torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0]) / 16  # mass 1
DECODER_WIDTH = 32


# ----------------------------------------------------------------------------- reading

def _trimesh():
    try:
        import trimesh
    except ImportError as e:
        raise ImportError('reading meshes and .ply files needs trimesh: pip install '
                          '"largekernel[pointcloud]"') from e
    return trimesh


def _check_finite(path, points: np.ndarray) -> None:
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} of {len(points)} points have NaN or infinite "
                         f"coordinates (first at row {int(np.argmax(bad))}); fix or remove the file")


def read_mesh_or_points(path: str | Path, mesh_points: int) -> np.ndarray:
    """(M, 3) float32 points of a file: `mesh_points` sampled uniformly on a mesh's surface (fixed
    seed, so the same file always gives the same points), or a point file's points as they are."""
    path = Path(path)
    ext = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if ext in (".npy", ".npz"):
        points = mesh_io.read_array_points(path)
    elif ext in (".xyz", ".txt", ".pts"):
        points = mesh_io.read_text_points(path)
    elif ext in MESH_EXTENSIONS:
        points = _read_mesh(path, mesh_points)
    else:
        raise ValueError(f"{path}: unsupported point-cloud file '{ext}' (use {', '.join(EXTENSIONS)})")
    points = mesh_io.to_float32(points)
    if len(points) == 0:
        raise ValueError(f"{path}: the file holds no points")
    _check_finite(path, points)
    if np.ptp(points, axis=0).max() <= 0:
        raise ValueError(f"{path}: degenerate point cloud: all {len(points)} points coincide")
    return points


def _load_mesh(path: Path, trimesh):
    """The trimesh object of a mesh file, read by mesh_io where trimesh misreads the variant."""
    ext = path.suffix.lower()
    if ext == ".off":
        return trimesh.Trimesh(*mesh_io.read_off(path), process=False)
    if ext == ".obj":
        return mesh_io.load_obj(path, trimesh)
    try:
        return trimesh.load(str(path), process=False)
    except Exception:
        if ext != ".ply":
            raise
        return trimesh.Trimesh(*mesh_io.read_ply(path), process=False)  # see mesh_io.read_ply


def _read_mesh(path: Path, mesh_points: int) -> np.ndarray:
    trimesh = _trimesh()
    try:
        loaded = _load_mesh(path, trimesh)
    except Exception as e:
        if isinstance(e, ValueError) and str(e).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: cannot read mesh: {type(e).__name__}: {e}") from e
    if isinstance(loaded, trimesh.Scene):
        if not loaded.geometry:
            raise ValueError(f"{path}: empty or unreadable mesh (no geometry found)")
        loaded = loaded.to_geometry()
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))))
    if len(vertices) == 0:
        raise ValueError(f"{path}: empty mesh (no vertices)")
    _check_finite(path, vertices)
    if len(faces) == 0:  # a point cloud (.ply vertices only)
        return vertices
    if not loaded.area > 0:
        raise ValueError(f"{path}: degenerate mesh: its {len(faces)} faces have zero total area")
    points, _ = trimesh.sample.sample_surface(loaded, mesh_points, seed=0)
    return points


def normalize_unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """Centre on the centroid and scale so the farthest point lies at distance 1."""
    centred = points - points.mean(0)
    return centred / centred.norm(dim=1).max().clamp(min=1e-12)


def farthest_point_sample(points: torch.Tensor, k: int, start: int = 0) -> torch.Tensor:
    """Indices of `k` points chosen by farthest-point sampling, from `start` (vectorised over points
    and batch; `points` is (N, 3) or (B, N, 3), the result (k,) or (B, k)). Needs k <= N."""
    batched = points.dim() == 3
    p = points if batched else points[None]
    b, n, _ = p.shape
    if not 0 < k <= n:
        raise ValueError(f"farthest_point_sample: k={k} must be in 1..{n} (the number of points)")
    idx = torch.empty(b, k, dtype=torch.long, device=p.device)
    dist = torch.full((b, n), float("inf"), dtype=p.dtype, device=p.device)
    far = torch.full((b,), start, dtype=torch.long, device=p.device)
    rows = torch.arange(b, device=p.device)
    for i in range(k):
        idx[:, i] = far
        d = (p - p[rows, far][:, None]).square().sum(-1)
        dist = torch.minimum(dist, d)
        far = dist.argmax(-1)
    return idx if batched else idx[0]


def sample_points(points: np.ndarray, num_points: int, path: str | Path = "") -> torch.Tensor:
    """`num_points` points of a cloud: farthest-point sampled when there are more, all of them plus
    repeats drawn with replacement (fixed seed; a warning names the file) when there are fewer."""
    p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    n = len(p)
    if n > num_points:
        p = p[farthest_point_sample(p, num_points)]
    elif n < num_points:
        warnings.warn(f"{path}: {n} points, fewer than num_points={num_points}; sampling "
                      f"{num_points - n} repeats with replacement", stacklevel=2)
        extra = torch.randint(n, (num_points - n,), generator=torch.Generator().manual_seed(0))
        p = torch.cat([p, p[extra]])
    return p


def load_points(path: str | Path, num_points: int, mesh_points: int) -> torch.Tensor:
    """A file -> (num_points, 3) float tensor on the unit sphere; ValueError naming the file."""
    with one_thread():
        return normalize_unit_sphere(sample_points(read_mesh_or_points(path, mesh_points),
                                                   num_points, path))


# ----------------------------------------------------------------------------- geometry

def rotation_about(axis: int, angle: torch.Tensor | float) -> torch.Tensor:
    """The 3x3 rotation by `angle` (radians, right-handed) about coordinate axis 0, 1 or 2."""
    angle = torch.as_tensor(angle, dtype=torch.float32)
    c, s = torch.cos(angle), torch.sin(angle)
    a, b = (axis + 1) % 3, (axis + 2) % 3
    r = torch.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def random_rotation(kind: str, up: int) -> torch.Tensor:
    """A random rotation from torch's global RNG: about the up axis, uniform on SO(3), or none."""
    if kind == "up":
        return rotation_about(up, torch.rand(()) * 2 * math.pi)
    if kind == "so3":  # a uniformly random unit quaternion
        w, x, y, z = F.normalize(torch.randn(4), dim=0).tolist()
        return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                             [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                             [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    if kind == "none":
        return torch.eye(3)
    raise ValueError(f"point_rotation={kind!r}; choose one of {', '.join(ROTATIONS)}")


def augment(points: torch.Tensor, rotation: str, up: int) -> torch.Tensor:
    """Training augmentation: random rotation, per-axis scale U(2/3, 3/2), per-axis shift U(-0.2, 0.2)."""
    r = random_rotation(rotation, up)
    scale = torch.empty(3).uniform_(2 / 3, 3 / 2)
    shift = torch.empty(3).uniform_(-0.2, 0.2)
    return (points @ r.T) * scale + shift


def rotated_copies(points: torch.Tensor, copies: int, up: int) -> torch.Tensor:
    """(copies, N, 3): the cloud rotated by 2*pi*i/copies about the up axis (copy 0 unchanged)."""
    return torch.stack([points @ rotation_about(up, 2 * math.pi * i / copies).T for i in range(copies)])


def view_rotations(views: int, up_axis: str = "z") -> torch.Tensor:
    """(V, 3, 3) camera rotations: yaw 2*pi*v/V about the up axis, then a fixed elevation of 30
    degrees. After rotating, the first horizontal axis is the image's column, the up axis its row
    (pointing up), and the second horizontal axis the depth."""
    a, b, up = UP_AXES[up_axis]
    tilt = rotation_about(a, ELEVATION)
    return torch.stack([tilt @ rotation_about(up, -2 * math.pi * v / views) for v in range(views)])


def knn(points: torch.Tensor, k: int, chunk: int = 1 << 24) -> torch.Tensor:
    """(B, N, k) indices of each point's k nearest neighbours (itself first), by `torch.cdist` and
    `topk`; the queries are processed in chunks of about `chunk` distances."""
    b, n, _ = points.shape
    if not 0 < k <= n:
        raise ValueError(f"knn={k} must be in 1..{n} (the number of points)")
    rows = max(1, chunk // max(1, b * n))
    parts = []
    for s in range(0, n, rows):
        d = torch.cdist(points[:, s:s + rows], points)
        parts.append(d.topk(k, dim=-1, largest=False).indices)
    return torch.cat(parts, dim=1)


def splat(pixels: torch.Tensor, values: torch.Tensor, height: int,
          width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter-add each point's values into the 3x3 pixels around its own, weighted by SPLAT.

    pixels (B, N, 2) integer (row, col) of each point, values (B, N, C). Points whose pixel lies
    outside the grid are dropped; weights falling outside the grid are lost. Returns the weighted
    sums (B, C, H, W) and the summed weights (B, 1, H, W) (the mass of one whole point is 1)."""
    b, n, c = values.shape
    row, col = pixels[..., 0], pixels[..., 1]
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    base = torch.arange(b, device=values.device)[:, None] * (height * width)
    kernel = SPLAT.to(values.device, values.dtype)
    sums = values.new_zeros(b * height * width, c)
    weights = values.new_zeros(b * height * width)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, q = row + dy, col + dx
            ok = inside & (r >= 0) & (r < height) & (q >= 0) & (q < width)
            w = ok.to(values.dtype) * kernel[dy + 1, dx + 1]
            index = (base + r.clamp(0, height - 1) * width + q.clamp(0, width - 1)).flatten()
            sums.index_add_(0, index, (values * w[..., None]).reshape(-1, c))
            weights.index_add_(0, index, w.flatten())
    return (sums.view(b, height, width, c).permute(0, 3, 1, 2),
            weights.view(b, 1, height, width))


# ----------------------------------------------------------------------------- model

class EdgeConv(nn.Module):
    """DGCNN edge features: for each point i and neighbour j, [f_j - f_i, f_i] -> 1x1 conv -> max over j."""

    def __init__(self, in_dim: int, out_dim: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Sequential(nn.Conv2d(2 * in_dim, out_dim, 1, bias=False),
                                  nn.BatchNorm2d(out_dim), nn.GELU())

    def forward(self, feats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """feats (B, C, N), points (B, N, 3) -> (B, out_dim, N)."""
        b, c, n = feats.shape
        idx = knn(points, min(self.k, n))  # (B, N, k)
        f = feats.transpose(1, 2)  # (B, N, C)
        neighbours = f[torch.arange(b, device=f.device)[:, None, None], idx]  # (B, N, k, C)
        centre = f[:, :, None].expand_as(neighbours)
        edge = torch.cat([neighbours - centre, centre], dim=-1).permute(0, 3, 1, 2)  # (B, 2C, N, k)
        return self.conv(edge).amax(dim=-1)


class PointCloudNet(nn.Module):
    """Points (B, N, 3) -> V rendered 3-channel views -> UniRepLKNet -> concatenated views -> logits.

    Each view's map has, per pixel, the splat-weighted mean of the 64 point features, the mean
    depth, and the occupancy 1 - exp(-summed weight); the decoder maps these 66 channels to 3.
    `view_fusion` adds a 1x1 conv over the V views' concatenated decoder features (every view sees
    all views at the same pixel), residual and zero-initialised so it starts as the identity.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, grid: int = 224, views: int = 4,
                 k: int = 32, view_fusion: bool = False, up_axis: str = "z") -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"views={views} must be >= 1")
        if up_axis not in UP_AXES:
            raise ValueError(f"up_axis={up_axis!r}; choose one of {', '.join(UP_AXES)}")
        self.grid, self.views, self.k, self.axes = grid, views, k, UP_AXES[up_axis]
        self.point_conv = nn.Sequential(nn.Conv1d(3, 8, 1, bias=False), nn.BatchNorm1d(8), nn.GELU())
        self.edge_conv = EdgeConv(8, 64, k)
        self.decoder = nn.Sequential(nn.Conv2d(64 + 2, DECODER_WIDTH, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(DECODER_WIDTH), nn.GELU())
        self.fusion = nn.Conv2d(views * DECODER_WIDTH, views * DECODER_WIDTH, 1) if view_fusion else None
        if self.fusion is not None:
            nn.init.zeros_(self.fusion.weight)
            nn.init.zeros_(self.fusion.bias)
        self.to_rgb = nn.Conv2d(DECODER_WIDTH, 3, 3, padding=1)
        self.register_buffer("rotations", view_rotations(views, up_axis), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = backbone
        width = views * backbone.num_features
        self.head_norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)


    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 3) -> each view's pixel (B, V, N, 2) as (row, col), and depth (B, V, N) / EXTENT.
        Orthographic: [-EXTENT, EXTENT] maps onto the grid; the up axis points to row 0."""
        cam = torch.einsum("vij,bnj->bvni", self.rotations, points)
        a, b, up = self.axes

        def to_pixel(c: torch.Tensor) -> torch.Tensor:
            return torch.floor((c / EXTENT + 1) / 2 * self.grid).long()

        pixels = torch.stack([to_pixel(-cam[..., up]), to_pixel(cam[..., a])], dim=-1)
        return pixels, cam[..., b] / EXTENT

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, 64, N): Conv1d 3->8, then edge features over the k nearest neighbours."""
        return self.edge_conv(self.point_conv(points.transpose(1, 2)), points)

    def render(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B * V, 3, grid, grid) ImageNet-normalised images (view-major per sample)."""
        b, n, _ = points.shape
        v = self.views
        feats = self.point_features(points).transpose(1, 2)  # (B, N, 64)
        pixels, depth = self.project(points)
        values = torch.cat([feats[:, None].expand(-1, v, -1, -1), depth[..., None]], dim=-1)
        sums, weights = splat(pixels.flatten(0, 1), values.flatten(0, 1), self.grid, self.grid)
        maps = torch.cat([sums / weights.clamp(min=1e-6), 1 - torch.exp(-weights)], dim=1)
        x = self.decoder(maps)  # (B * V, DECODER_WIDTH, H, W)
        if self.fusion is not None:
            stacked = x.reshape(b, v * DECODER_WIDTH, self.grid, self.grid)
            x = (stacked + self.fusion(stacked)).reshape_as(x)
        x = torch.sigmoid(self.to_rgb(x))
        return (x - self.mean) / self.std

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"PointCloudNet expects (B, N, 3) points, got {tuple(points.shape)}")
        feats = self.backbone(self.render(points))  # (B * V, C) pooled, normed
        return self.head(self.head_norm(feats.reshape(points.shape[0], -1)))

    # ---- engine helpers (optimizer groups, gradient checkpointing) ---------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    num_layer_ids = 14

    def layer_id(self, name: str) -> int:
        """Layer-decay ids: the front end with the stem (0), the backbone's own, the head last (13)."""
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone."):])
        return 13 if name.startswith("head") else 0


# ----------------------------------------------------------------------------- datasets

class PointCloudDataset(Dataset):
    """(path, class) samples -> (N, 3) points, augmented when training; with `copies`, a
    (copies, N, 3) stack of rotated test-time copies. Decoded, sampled clouds are cached in memory
    (per dataset and process), so epochs after the first read no files."""

    def __init__(self, samples: list[Sample], classes: list[str], cfg: TrainConfig, train: bool,
                 copies: int | None = None) -> None:
        if cfg.point_rotation not in ROTATIONS:
            raise ValueError(f"point_rotation={cfg.point_rotation!r}; choose one of {', '.join(ROTATIONS)}")
        if cfg.up_axis not in UP_AXES:
            raise ValueError(f"up_axis={cfg.up_axis!r}; choose one of {', '.join(UP_AXES)}")
        self.samples, self.classes, self.train, self.copies = samples, classes, train, copies
        self.num_points, self.mesh_points, self.strict = cfg.num_points, cfg.mesh_points, cfg.strict
        self.rotation, self.up = cfg.point_rotation, UP_AXES[cfg.up_axis][2]
        self.targets = [y for _, y in samples]
        self.cache: dict[int, torch.Tensor | Skipped] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def points(self, i: int) -> torch.Tensor | Skipped:
        if i not in self.cache:
            path = self.samples[i][0]
            try:
                self.cache[i] = load_points(path, self.num_points, self.mesh_points)
            except ValueError as e:
                if self.strict:
                    raise
                self.cache[i] = Skipped(str(path), str(e))
        return self.cache[i]

    def __getitem__(self, i: int):
        p = self.points(i)
        if isinstance(p, Skipped):
            return p
        label = self.samples[i][1]
        if self.train:
            return augment(p, self.rotation, self.up), label
        if self.copies:
            return rotated_copies(p, self.copies, self.up), label
        return p, label


def _class_index(found: list[str], classes: list[str] | None, where: str, source: str) -> list[str]:
    if classes is None:
        return found
    check_classes(found, classes, where, source)
    return classes


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


def _shape_names(root: Path) -> Path | None:
    for name in ("modelnet40_shape_names.txt", "shape_names.txt"):
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("*_shape_names.txt"))
    return found[0] if found else None


def scan_resampled(root: Path, names: Path, split: str, classes: list[str] | None,
                   source: str) -> tuple[list[Sample], list[str]]:
    """ModelNet40 resampled layout: shape names, `*_{split}.txt` lists of ids such as airplane_0001,
    files at root/<class>/<id>.txt."""
    found = [line.strip() for line in names.read_text().splitlines() if line.strip()]
    classes = _class_index(found, classes, str(names), source)
    prefix = names.name[: -len("shape_names.txt")]  # "modelnet40_": modelnet40_train.txt
    lists = ([root / f"{prefix}{split}.txt"] if prefix and (root / f"{prefix}{split}.txt").is_file()
             else sorted(root.glob(f"*_{split}.txt")))
    if not lists:
        raise ValueError(f"{root}: has {names.name} but no *_{split}.txt list of shape ids "
                         f"(e.g. modelnet40_{split}.txt with lines like airplane_0001)")
    if len(lists) > 1:
        raise ValueError(f"{root}: several {split} lists ({', '.join(p.name for p in lists)}) for "
                         f"{names.name}; keep one, or name it {prefix or 'NAME_'}{split}.txt next to "
                         f"{prefix or 'NAME_'}shape_names.txt")
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for line in lists[0].read_text().splitlines():
        shape_id = line.strip()
        if not shape_id:
            continue
        name = shape_id.rsplit("_", 1)[0]
        if name not in index:
            raise ValueError(f"{lists[0]}: {shape_id!r} names class {name!r}, which is not in "
                             f"{names.name}")
        file = root / name / f"{shape_id}.txt"
        if not file.is_file():
            missing.append(file)
        samples.append((str(file), index[name]))
    if missing:
        raise ValueError(f"{lists[0]} lists {len(missing)} file(s) that do not exist, e.g. {missing[0]}")
    if not samples:
        raise ValueError(f"{lists[0]}: the list names no shapes")
    return samples, classes


def scan_folders(root: Path, split: str | None, classes: list[str] | None,
                 source: str) -> tuple[list[Sample], list[str]]:
    """root/<class>/<split>/*.off (ModelNet40 mesh layout) or root/<class>/**/<file> (split None)."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise ValueError(f"{root}: no point clouds found; expected one subfolder per class "
                         f"(ModelNet40: {root}/<class>/train|test/*.off), or shape_names.txt and "
                         "train/test lists")
    classes = _class_index([d.name for d in dirs], classes, str(root), source)
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for d in dirs:
        folder = d / split if split else d
        files = _files(folder) if folder.is_dir() else []
        if not files and split != "test":
            raise ValueError(f"{folder}: no point-cloud files ({' '.join(EXTENSIONS)}); add files "
                             "or remove the class folder")
        samples += [(str(p), index[d.name]) for p in files]
    if not samples:
        raise ValueError(f"{root}: no files in any <class>/{split} folder")
    return samples, classes


def load_split(path: str | Path, split: str, classes: list[str] | None,
               source: str = "the class list") -> tuple[list[Sample], list[str], bool]:
    """(samples, classes, has_splits): a layout's `split` ("train"/"test") part, or all files of a
    class-per-folder tree or CSV (then has_splits is False)."""
    p = Path(path)
    if p.is_file():
        samples, classes = read_csv(p, classes, source, "point clouds")
        return samples, classes, False
    if not p.is_dir():
        raise ValueError(f"{p} does not exist; pass a ModelNet-style folder (<class>/train|test/"
                         "*.off), a resampled folder (shape_names.txt + lists), a class-per-folder "
                         "tree or a CSV of path,label")
    names = _shape_names(p)
    if names is not None:
        return (*scan_resampled(p, names, split, classes, source), True)
    if any((d / "train").is_dir() or (d / "test").is_dir() for d in p.iterdir() if d.is_dir()):
        return (*scan_folders(p, split, classes, source), True)
    return (*scan_folders(p, None, classes, source), False)


def read_layout(path: str | Path, part: str, classes: list[str] | None,
                source: str) -> tuple[list[Sample], list[str], bool]:
    """The `files.Reader` of point clouds: a layout's test split serves as validation and test."""
    return load_split(path, "train" if part == "train" else "test", classes, source)


# ----------------------------------------------------------------------------- modality

# ----------------------------------------------------------------------------- command line

def _make_shapes(args) -> int:
    """7 classes (annulus, box, capsule, cone, cylinder, sphere, torus) with random size, aspect,
    rotation about the up (z) axis, a small tilt and vertex noise."""
    from .shapes_data import CLASSES, make_shapes

    out = make_shapes(args.output, args.per_class, args.seed, args.fmt)
    sys.stdout.write(f"wrote {args.per_class * len(CLASSES)} shapes ({args.fmt}) in {len(CLASSES)} "
                     f"classes to {out}\n")
    return 0


SHAPES = Command("shapes", "write labelled 3-D shapes (trimesh primitives) as .off/.ply/.obj/.stl "
                           "meshes in the ModelNet40 layout, or .txt points in the resampled layout",
                 _make_shapes, [
    arg("output", metavar="OUT", help="folder: OUT/<class>/train|test/<class>_NNNN.<ext> (txt: "
        "OUT/shape_names.txt, OUT/shapes_train|test.txt, OUT/<class>/<id>.txt)"),
    arg("--per-class", type=positive_int, default=20, metavar="N",
        help="shapes per class, a quarter of them in the test split (default 20)"),
    RANDOM_SEED,
    arg("--format", dest="fmt", choices=("off", "ply", "mixed", "txt"), default="off",
        help="off or ply meshes, mixed (off/ply/obj/stl in turn), or txt x,y,z,nx,ny,nz points "
             "(default off)"),
], _make_shapes.__doc__)


@dataclass
class PointCloudOptions:
    """The point-cloud plug-in's options: sampling, views, neighbours, copies, rotation."""

    num_points: int = option(1024, "points per cloud after farthest-point sampling (the paper: 4096)")
    mesh_points: int = option(10000, "points sampled uniformly on a mesh's surface before farthest-point sampling")
    views: int = option(4, "rendered views per cloud (authors' code 4, paper 3); the grid side is input_size")
    knn: int = option(32, "neighbours of the DGCNN edge features")
    view_fusion: bool = option(False, "add a residual 1x1 conv across the views' decoder features")
    test_copies: int = option(8, "rotated copies (about the up axis) averaged by validation, eval and predict")
    point_rotation: str = option("up", "training rotation: up (about up_axis), so3 (any) or none")
    up_axis: str = option("z", "the shapes' up axis: z (ModelNet40 meshes), y (resampled .txt) or x")


@register_plugin
class PointCloudModality(Classification):
    """Point clouds and meshes: ModelNet40 layouts, V-view rendering front end, rotated test copies."""

    name = "pointcloud"
    options = PointCloudOptions
    data_generators = (SHAPES,)
    extensions = EXTENSIONS
    eval_copies = True

    def datasets(self, cfg: TrainConfig, train: bool = True) -> DataBundle:
        """Train = the train split, val = the test split (or `val` given, or a stratified split of
        a layout without splits); with train=False only the eval set (the test split of a layout)."""
        _check_config(cfg)

        def make(samples: list[Sample], classes: list[str], part: str) -> PointCloudDataset:
            is_train = part == "train"
            return PointCloudDataset(samples, classes, cfg, is_train,
                                     None if is_train else cfg.test_copies)

        return file_datasets(cfg, train, read_layout, make,
                             "ModelNet40 folder, resampled folder, class-per-folder tree or CSV of "
                             "path,label", "a folder or CSV")

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        _check_config(cfg)
        backbone = create_model(cfg.model, pretrained=cfg.pretrained, num_classes=0, in_chans=3,
                                drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
        model = PointCloudNet(backbone, num_classes, cfg.input_size, cfg.views, cfg.knn,
                              cfg.view_fusion, cfg.up_axis)
        with torch.no_grad():
            model.head.weight.mul_(cfg.head_init_scale)
        return model

    def prepare_batch(self, x, y, num_classes, cfg, gen):
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ValueError("mixup/cutmix are image augmentations; the point-cloud modality "
                             "takes mixup=0 and cutmix=0")
        return super().prepare_batch(x, y, num_classes, cfg, gen)

    def example_input(self, cfg: TrainConfig, batch: int = 2, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Random clouds on the unit sphere, (batch, num_points, 3)."""
        x = torch.randn(batch, cfg.num_points, 3, generator=generator)
        return x / x.norm(dim=-1, keepdim=True)

    def input_contract(self, cfg: TrainConfig) -> dict[str, str]:
        return dict(input=f"float32 N x {cfg.num_points} x 3: x, y, z of one cloud per row",
                    preprocessing=f"read the points (a mesh: {cfg.mesh_points} points sampled on its "
                                  f"surface); farthest-point sample {cfg.num_points}; centre and scale "
                                  f"into the unit sphere. The graph renders {cfg.views} views itself. "
                                  f"eval and predict average the softmax over {cfg.test_copies} copies "
                                  f"rotated about the {cfg.up_axis} axis (rows of the batch), outside "
                                  "the graph",
                    output=f"N x {len(cfg.classes or [])} class logits")

    def load(self, path: str | Path, cfg: TrainConfig) -> torch.Tensor:
        """The `test_copies` rotated copies (copies, num_points, 3) of one unit-sphere cloud, for
        `predict` (which averages their scores, as `eval`)."""
        return rotated_copies(load_points(path, cfg.num_points, cfg.mesh_points), cfg.test_copies,
                              UP_AXES[cfg.up_axis][2])


def _check_config(cfg: TrainConfig) -> None:
    if cfg.in_chans != 3:
        raise ValueError(f"in_chans={cfg.in_chans}: the point-cloud front end renders 3-channel "
                         "views; leave in_chans at 3")
    for name in ("num_points", "mesh_points", "views", "knn", "test_copies", "input_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.knn > cfg.num_points:
        raise ValueError(f"knn={cfg.knn} exceeds num_points={cfg.num_points}")
