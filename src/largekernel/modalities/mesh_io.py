"""Readers for the mesh and point-file variants that trimesh does not read, or reads wrongly.

trimesh reads PLY (ASCII and binary, any extra vertex properties), STL (ASCII and binary) and OBJ;
this module covers the rest:
- OFF, parsed here in full: trimesh's OFF loader reads numbers by position, so it refuses valid files
  (no `OFF` keyword, `#` comments after coordinates or between vertices) and silently misreads others
  (a 4-D `4OFF` file becomes a 3-D mesh of the first three coordinates). The Geomview format is small:
  an optional `[ST][C][N][4][n]OFF` keyword, the counts `vertices faces [edges]`, one vertex per line
  (x y z, then optional normal, colour and texture columns), one polygon per line
  (`n i1 .. in`, then an optional colour), `#` comments anywhere.
- OBJ faces with negative (relative) indices: trimesh resolves them against the wrong vertex list
  when a file holds several objects or groups, so they are made absolute before trimesh reads the
  file; indented or tab-separated statements are normalised too.
- PLY files whose faces mix sizes next to a further list property (MeshLab's per-corner texture
  coordinates): trimesh refuses them, so they are read here when it does.
- text point files (.xyz/.txt/.pts): x,y,z first, any further columns (intensity, colour, normals)
  ignored; comma, semicolon or whitespace separated; header lines (column names, a point count) and
  `#` or `//` comments skipped.
- NumPy clouds: .npy arrays (N, 3+) or with x/y/z fields, .npz archives holding one such array.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

OFF_KEYWORD = re.compile(r"^(ST)?(C)?(N)?(4)?(n)?OFF")
NPZ_KEYS = ("points", "xyz", "pos", "point_cloud", "pc", "vertices", "data", "arr_0")
_SEPARATORS = re.compile(r"[\s,;]+")
_OBJ_ODD_SPACE = re.compile(r"^(?:[ \t]+[a-z]|[a-z]+\t)", flags=re.M)
_OBJ_STATEMENT = re.compile(r"^[ \t]*([a-z]+)[ \t]+", flags=re.M)


def _content_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, tokens) of every line that is not blank once `#` comments are cut
    (CRLF and CR line ends included)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    out = []
    for no, line in enumerate(text.splitlines(), start=1):
        tokens = (line.split("#", 1)[0] if "#" in line else line).split()
        if tokens:
            out.append((no, tokens))
    return out


def _is_int(token: str) -> bool:
    """A count or an index: a non-negative integer."""
    return token.lstrip("+").isdigit()


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, triangles (F, 3) int64) of an ASCII OFF file; polygons are split
    into triangle fans, faces of fewer than 3 vertices dropped. ValueError naming the line otherwise."""
    path = Path(path)
    lines = _content_lines(path)
    if not lines:
        raise ValueError(f"{path}: cannot read mesh: the file is empty")
    pos = 0
    no, head = lines[0]
    counts: list[str] = []
    match = OFF_KEYWORD.match(head[0])
    if match:
        if match.group(4):
            raise ValueError(f"{path}: cannot read mesh: 4-D OFF ({head[0]} header) is not supported; "
                             "project the vertices to 3-D and save them as OFF or PLY")
        rest = [head[0][match.end():]] + head[1:]  # ModelNet40 writes "OFF490 518 0"
        rest = [t for t in rest if t]
        if rest and rest[0].upper() == "BINARY":
            raise ValueError(f"{path}: cannot read mesh: binary OFF is not supported; save it as ASCII "
                             "OFF or as PLY (e.g. trimesh.load(path).export('mesh.ply'))")
        if match.group(5):  # nOFF: the vertex dimension comes first
            dim, rest = (rest[0], rest[1:]) if rest else (None, [])
            if dim is None:
                pos += 1
                no, dim_tokens = lines[pos] if pos < len(lines) else (no, ["?"])
                dim, rest = dim_tokens[0], dim_tokens[1:]
            if dim != "3":
                raise ValueError(f"{path}: cannot read mesh: {dim}-D OFF (nOFF header) is not "
                                 "supported; only 3-D vertices are")
        counts = rest
        if not counts:
            pos += 1
            if pos >= len(lines):
                raise ValueError(f"{path}: cannot read mesh: the file ends after the OFF keyword")
            no, counts = lines[pos]
    elif all(_is_int(t) for t in head) and 2 <= len(head) <= 3:  # the keyword is optional
        counts = head
    else:
        raise ValueError(f"{path}: cannot read mesh: line {no} is {' '.join(head)[:60]!r}; an OFF file "
                         "starts with 'OFF' or the counts 'vertices faces edges'")
    if len(counts) < 2 or not all(_is_int(t) for t in counts[:3]):
        raise ValueError(f"{path}: cannot read mesh: line {no}: expected the counts 'vertices faces "
                         f"edges', got {' '.join(counts)[:60]!r}")
    n_vertices, n_faces = int(counts[0]), int(counts[1])
    body = lines[pos + 1:]
    if len(body) < n_vertices + n_faces:
        raise ValueError(f"{path}: cannot read mesh: the header announces {n_vertices} vertices and "
                         f"{n_faces} faces but the file has only {len(body)} data lines (truncated?)")
    vertices = _off_vertices(path, body[:n_vertices])
    return vertices, _off_triangles(path, body[n_vertices:n_vertices + n_faces], n_vertices)


def _off_vertices(path: Path, lines: list[tuple[int, list[str]]]) -> np.ndarray:
    try:  # numpy parses all the strings in one call; the loop below only names a bad line
        vertices = np.array([tokens[:3] for _, tokens in lines], dtype=np.float64)
        if vertices.shape == (len(lines), 3):
            return vertices
    except ValueError:
        pass
    for no, tokens in lines:
        try:
            ok = len([float(t) for t in tokens[:3]]) == 3
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{path}: cannot read mesh: line {no}: expected vertex coordinates x y z, "
                             f"got {' '.join(tokens)[:60]!r}")
    return np.zeros((0, 3))  # no vertices at all


def _off_triangles(path: Path, lines: list[tuple[int, list[str]]], n_vertices: int) -> np.ndarray:
    """Polygons `n i1 .. in [colour]` -> triangle fans (i1, ik, ik+1), in file order."""
    def bad(no: int, tokens: list[str], what: str) -> ValueError:
        return ValueError(f"{path}: cannot read mesh: line {no}: {what}, got {' '.join(tokens)[:60]!r}")

    sizes = np.empty(len(lines), dtype=np.int64)
    for i, (no, tokens) in enumerate(lines):
        if not _is_int(tokens[0]) or len(tokens) <= int(tokens[0]):
            raise bad(no, tokens, "expected a face 'n i1 .. in'")
        sizes[i] = int(tokens[0])
    parts, order = [], []
    for n in np.unique(sizes[sizes >= 3]):
        rows = np.flatnonzero(sizes == n)
        try:
            faces = np.array([lines[r][1][1:1 + n] for r in rows], dtype=np.int64)
        except ValueError:
            r = next(r for r in rows if not all(_is_int(t) for t in lines[r][1][1:1 + n]))
            raise bad(lines[r][0], lines[r][1], "expected a face 'n i1 .. in' of integers") from None
        out_of_range = (faces < 0) | (faces >= n_vertices)
        if out_of_range.any():
            r = rows[int(np.flatnonzero(out_of_range.any(1))[0])]
            raise bad(lines[r][0], lines[r][1], f"a vertex index is outside 0..{n_vertices - 1}")
        for k in range(1, n - 1):
            parts.append(faces[:, [0, k, k + 1]])
            order.append(rows * sizes.max() + k)  # sorts fans by face, then by position in the fan
    if not parts:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(parts)[np.argsort(np.concatenate(order), kind="stable")]


def obj_with_absolute_indices(text: str) -> str | None:
    """The OBJ text with negative face indices made absolute, or None when it has none."""
    if not re.search(r"^\s*f\s[^\n]*[\s/]-\d", text, flags=re.M):
        return None
    counts = {"v": 0, "vt": 0, "vn": 0}
    slots = ("v", "vt", "vn")
    out = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens and tokens[0] in counts:
            counts[tokens[0]] += 1
        elif tokens and tokens[0] == "f":
            refs = []
            for ref in tokens[1:]:
                parts = ref.split("/")
                parts = [str(counts[slots[k]] + 1 + int(p)) if p.startswith("-") else p
                         for k, p in enumerate(parts[:3])]
                refs.append("/".join(parts))
            line = "f " + " ".join(refs)
        out.append(line)
    return "\n".join(out) + "\n"


def load_obj(path: Path, trimesh):
    """trimesh's reading of an OBJ file, negative indices resolved first (see the module docstring).

    trimesh also misses statements indented or followed by a tab (`  f 1 2 3`, `v\t0 0 0`: it then
    returns the vertices as a point cloud), so those are rewritten as `f 1 2 3` first.
    """
    text = path.read_bytes().decode("utf-8", errors="replace")
    spaced = _OBJ_STATEMENT.sub(r"\1 ", text) if _OBJ_ODD_SPACE.search(text) else text
    fixed = obj_with_absolute_indices(spaced)
    if fixed is None and spaced is text:
        return trimesh.load(str(path), process=False)
    return trimesh.load(io.StringIO(fixed or spaced), file_type="obj", process=False)


PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply_header(path: Path) -> tuple[str, list[list], int]:
    """(format, [[element name, count, [(name, type, list count type or None)]]], body offset)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: cannot read mesh: not a PLY file (no 'ply' ... 'end_header' header)")
    fmt, elements = "", []
    for line in head[:end].decode("ascii", errors="replace").splitlines():
        words = line.split()
        if words[:1] == ["format"] and len(words) >= 2:
            fmt = words[1]
        elif words[:1] == ["element"] and len(words) == 3:
            elements.append([words[1], int(words[2]), []])
        elif words[:2] == ["property", "list"] and len(words) == 5 and elements:
            elements[-1][2].append((words[4], PLY_TYPES[words[3]], PLY_TYPES[words[2]]))
        elif words[:1] == ["property"] and len(words) == 3 and elements:
            elements[-1][2].append((words[2], PLY_TYPES[words[1]], None))
    return fmt, elements, head.index(b"\n", end) + 1


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, triangles (F, 3) int64) of an ASCII or binary PLY, for the files
    trimesh's reader refuses: faces of mixed sizes next to further list properties (MeshLab's
    per-corner `texcoord`). Polygons are split into triangle fans."""
    path = Path(path)
    fmt, elements, offset = _ply_header(path)
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
    if order is None and fmt != "ascii":
        raise ValueError(f"{path}: cannot read mesh: unknown PLY format {fmt!r}")
    data = path.read_bytes()[offset:]
    tokens = data.split() if order is None else None
    at, vertices, polygons = 0, None, []
    for name, count, props in elements:
        if all(p[2] is None for p in props):  # scalar properties only: one array
            if order is None:
                size = count * len(props)
                rows = np.array(tokens[at:at + size], dtype=np.float64).reshape(count, len(props))
                at += size
                columns = {p[0]: rows[:, k] for k, p in enumerate(props)}
            else:
                dtype = np.dtype([(p[0], order + p[1]) for p in props])
                rows = np.frombuffer(data, dtype, count, at)
                at += count * dtype.itemsize
                columns = {p[0]: rows[p[0]] for p in props}
            if name == "vertex":
                vertices = np.stack([columns[c].astype(np.float64) for c in "xyz"], axis=1)
            continue
        for _ in range(count):  # records with lists: one by one
            for prop, kind, count_kind in props:
                if order is None:
                    n = int(tokens[at]) if count_kind else 1
                    values = tokens[at + bool(count_kind):at + bool(count_kind) + n]
                    at += bool(count_kind) + n
                else:
                    n = 1
                    if count_kind:
                        n = int(np.frombuffer(data, order + count_kind, 1, at)[0])
                        at += np.dtype(count_kind).itemsize
                    values = np.frombuffer(data, order + kind, n, at)
                    at += n * np.dtype(kind).itemsize
                if name == "face" and prop in ("vertex_indices", "vertex_index"):
                    polygons.append([int(v) for v in values])
    if vertices is None:
        raise ValueError(f"{path}: cannot read mesh: the PLY has no vertex element with x, y, z")
    triangles = np.asarray([(f[0], f[k], f[k + 1]) for f in polygons for k in range(1, len(f) - 1)],
                           dtype=np.int64).reshape(-1, 3)
    if len(triangles) and not (0 <= triangles.min() and triangles.max() < len(vertices)):
        raise ValueError(f"{path}: cannot read mesh: a face's vertex index is outside 0..{len(vertices) - 1}")
    return vertices, triangles


def _point_row(line: str) -> tuple[str, list[str], list[float] | None]:
    """(the line stripped, its fields, the first three as numbers or None)."""
    text = line.strip().strip(",;")
    fields = _SEPARATORS.split(text) if text and not text.startswith(("#", "//")) else []
    try:
        return text, fields, [float(v) for v in fields[:3]]
    except ValueError:
        return text, fields, None


def _first_point(path: Path) -> tuple[int, str | None] | None:
    """(lines before the first point, its separator: ',' ';' or None for whitespace); None when
    no line looks like a point."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            text, fields, values = _point_row(line)
            if fields and values is not None and len(fields) > 1:
                return line_no - 1, ";" if ";" in text else "," if "," in text else None
    return None


def read_text_points(path: str | Path) -> np.ndarray:
    """(N, 3) float64 x,y,z of a text point file (.xyz/.txt/.pts); see the module docstring.
    NumPy's C parser reads the rows after the header; a file it refuses is read line by line, so
    the error names the line."""
    path = Path(path)
    first = _first_point(path)
    if first is not None:
        try:
            return np.loadtxt(path, delimiter=first[1], skiprows=first[0], usecols=(0, 1, 2),
                              comments=("#", "//"), ndmin=2, dtype=np.float64, encoding="utf-8")
        except ValueError:
            pass
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            text, fields, values = _point_row(line)
            if not fields or (not rows and (values is None or len(fields) == 1)):
                continue  # blank, a comment, or a header before the first point (names, a count)
            if values is None:
                raise ValueError(f"{path}, line {line_no}: not a number in {text[:60]!r}; expected "
                                 "rows of x,y,z[,...]")
            if len(values) < 3:
                raise ValueError(f"{path}, line {line_no}: {len(fields)} value(s); expected rows of "
                                 "x,y,z[,...]")
            rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _cloud_array(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.names and {"x", "y", "z"} <= set(arr.dtype.names):
        return np.stack([arr["x"], arr["y"], arr["z"]], axis=-1).reshape(-1, 3).astype(np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{where}: expected a numeric (N, 3+) array of x,y,z[,...] rows, got "
                         f"shape {arr.shape} dtype {arr.dtype}")
    return arr[:, :3].astype(np.float64)


def read_array_points(path: str | Path) -> np.ndarray:
    """(N, 3) float64 x,y,z of a .npy array or of the point array in a .npz archive."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read {path.suffix} array: {e}") from e
    if isinstance(loaded, np.ndarray):
        return _cloud_array(loaded, str(path))
    with loaded:
        keys = list(loaded.keys())
        key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"{path}: cannot tell which array holds the points (arrays: "
                             f"{', '.join(keys) or 'none'}); name it 'points'")
        return _cloud_array(loaded[key], f"{path} (array {key!r})")


def to_float32(points: np.ndarray) -> np.ndarray:
    """float32 points; a cloud far from the origin relative to its size (georeferenced scans: x in
    the millions of metres, detail in millimetres) is first moved to its bounding-box centre in
    float64, since float32 keeps only ~7 significant digits."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) and np.isfinite(points).all():
        lo, hi = points.min(0), points.max(0)
        centre = (lo + hi) / 2
        if np.abs(centre).max() > 100 * max((hi - lo).max(), np.finfo(np.float64).tiny):
            points = points - centre
    return points.astype(np.float32)
