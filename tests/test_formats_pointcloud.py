"""Mesh and point-file variants as other tools write them: OFF dialects, PLY/OBJ/STL, text and NumPy clouds."""
import struct

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from largekernel.modalities.mesh_io import read_off, read_ply  # noqa: E402
from largekernel.modalities.pointcloud import load_points, read_mesh_or_points  # noqa: E402

SQUARE = "0 0 0\n1 0 0\n1 1 0\n0 1 0\n"  # the unit square at z = 0, as one quad


def on_unit_square(points: np.ndarray) -> bool:
    return bool((points[:, 2] == 0).all() and (points[:, :2] >= -1e-6).all()
                and (points[:, :2] <= 1 + 1e-6).all())


# ---------------------------------------------------------------------------------------- OFF

OFF_VARIANTS = {
    "keyword": "OFF\n4 1 0\n" + SQUARE + "4 0 1 2 3\n",
    "no keyword": "4 1 0\n" + SQUARE + "4 0 1 2 3\n",
    "counts on the keyword line": "OFF 4 1 0\n" + SQUARE + "4 0 1 2 3\n",
    "ModelNet40 header quirk": "OFF4 1 0\n" + SQUARE + "4 0 1 2 3\n",
    "no edge count": "OFF\n4 1\n" + SQUARE + "4 0 1 2 3\n",
    "face colour (RGBA floats)": "OFF\n4 1 0\n" + SQUARE + "4 0 1 2 3 0.1 0.2 0.3 1.0\n",
    "face colour (RGB ints)": "OFF\n4 1 0\n" + SQUARE + "4 0 1 2 3 255 0 0\n",
    "face colour index": "OFF\n4 1 0\n" + SQUARE + "4 0 1 2 3 7\n",
    "COFF": "COFF\n4 1 0\n" + SQUARE.replace("\n", " 255 0 0 255\n") + "4 0 1 2 3\n",
    "NOFF": "NOFF\n4 1 0\n" + SQUARE.replace("\n", " 0 0 1\n") + "4 0 1 2 3\n",
    "CNOFF": "CNOFF\n4 1 0\n" + SQUARE.replace("\n", " 0 0 1 1 0 0 1\n") + "4 0 1 2 3\n",
    "STOFF": "STOFF\n4 1 0\n" + SQUARE.replace("\n", " 0.5 0.5\n") + "4 0 1 2 3\n",
    "nOFF 3-D": "nOFF\n3\n4 1 0\n" + SQUARE + "4 0 1 2 3\n",
    "comments anywhere": "# made by hand\nOFF # keyword\n# counts next\n4 1 0\n0 0 0 # first vertex\n"
                         "# between vertices\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3 # the quad\n# end\n",
    "blank lines": "\nOFF\n\n4 1 0\n\n0 0 0\n1 0 0\n\n1 1 0\n0 1 0\n\n4 0 1 2 3\n\n",
    "CRLF": ("OFF\n4 1 0\n" + SQUARE + "4 0 1 2 3\n").replace("\n", "\r\n"),
    "tabs": "OFF\n4\t1\t0\n" + SQUARE.replace(" ", "\t") + "4\t0\t1\t2\t3\n",
    "two triangles": "OFF\n4 2 0\n" + SQUARE + "3 0 1 2\n3 0 2 3\n",
}


@pytest.mark.parametrize("variant", list(OFF_VARIANTS))
def test_off_variants_read_as_the_unit_square(tmp_path, variant):
    path = tmp_path / "square.off"
    path.write_bytes(OFF_VARIANTS[variant].encode())
    vertices, faces = read_off(path)
    assert vertices.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3]]  # the quad as a triangle fan
    points = read_mesh_or_points(path, mesh_points=200)
    assert points.shape == (200, 3) and on_unit_square(points)


def test_off_polygons_are_fanned_into_triangles_of_the_same_area(tmp_path):
    """A convex pentagon (shoelace area 2) and a triangle, in one file, with per-face colours."""
    path = tmp_path / "penta.off"
    path.write_text("OFF\n6 2 0\n0 0 0\n1 0 0\n1.5 1 0\n0.5 1.5 0\n-0.5 1 0\n0 0 1\n"
                    "5 0 1 2 3 4 0 0 255\n3 0 1 5 0.5 0.5 0.5 1\n")
    vertices, faces = read_off(path)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 1, 5]]
    assert trimesh.Trimesh(vertices, faces, process=False).area == pytest.approx(2.5, abs=1e-12)


def test_off_written_by_trimesh_round_trips(tmp_path):
    box = trimesh.creation.box(extents=[1, 2, 3])
    box.export(tmp_path / "box.off")
    vertices, faces = read_off(tmp_path / "box.off")
    np.testing.assert_allclose(vertices, box.vertices, atol=1e-8)  # written with 8 decimals
    assert np.array_equal(faces, box.faces)


@pytest.mark.parametrize("text, message", [
    ("4OFF\n4 1 0\n0 0 0 1\n1 0 0 1\n1 1 0 1\n0 1 0 1\n4 0 1 2 3\n", r"4-D OFF \(4OFF header\) is not supported"),
    ("nOFF\n4\n4 1 0\n0 0 0 1\n1 0 0 1\n1 1 0 1\n0 1 0 1\n4 0 1 2 3\n", r"4-D OFF \(nOFF header\) is not supported"),
    ("OFF BINARY\n", r"binary OFF is not supported; save it as ASCII OFF or as PLY"),
    ("OFF\n4 1 0\n" + SQUARE, r"announces 4 vertices and 1 faces but the file has only 4 data lines"),
    ("OFF\n4 1 0\n" + SQUARE + "4 0 1 2 9\n", r"line 7: a vertex index is outside 0\.\.3"),
    ("OFF\n4 1 0\n" + SQUARE + "4 0 1 2 -1\n", r"line 7: a vertex index is outside 0\.\.3, got '4 0 1 2 -1'"),
    ("OFF\n4 1 0\n" + SQUARE + "4 0 1 2 x\n", r"line 7: expected a face 'n i1 \.\. in' of integers"),
    ("OFF\n-4 1 0\n" + SQUARE + "4 0 1 2 3\n", r"line 2: expected the counts 'vertices faces edges'"),
    ("OFF\n4 1 0\n0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", r"line 3: expected vertex coordinates x y z"),
    ("OFF\n4 1 0\n" + SQUARE + "4 0 1 2\n", r"line 7: expected a face 'n i1 \.\. in'"),
    ("solid x\n", r"line 1 is 'solid x'; an OFF file starts with 'OFF'"),
])
def test_off_variants_it_cannot_read_are_named(tmp_path, text, message):
    path = tmp_path / "bad.off"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.off: cannot read mesh: .*" + message):
        read_mesh_or_points(path, 100)


# ---------------------------------------------------------------------------------------- PLY

def _ply(path, fmt: str, with_faces: bool) -> np.ndarray:
    """A PLY with float x,y,z, float normals, uchar colours and a float intensity per vertex."""
    rng = np.random.default_rng(0)
    vtype = np.dtype([("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
                      ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("intensity", "f4")])
    v = np.zeros(4, vtype)
    v["x"], v["y"] = [0, 1, 1, 0], [0, 0, 1, 1]
    v["nz"], v["red"], v["intensity"] = 1, rng.integers(0, 255, 4), rng.random(4)
    head = ["ply", f"format {fmt} 1.0", "comment written by hand", "element vertex 4"]
    head += [f"property {'float' if t.kind == 'f' else 'uchar'} {n}" for n, (t, _) in vtype.fields.items()]
    if with_faces:
        head += ["element face 1", "property list uchar int vertex_indices"]
    head.append("end_header")
    body = b""
    if fmt == "ascii":
        body = "".join(" ".join(str(x) for x in row) + "\n" for row in v.tolist()).encode()
        body += b"4 0 1 2 3\n" if with_faces else b""
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        body = v.astype(vtype.newbyteorder(order)).tobytes()
        body += struct.pack(f"{order}B4i", 4, 0, 1, 2, 3) if with_faces else b""
    path.write_bytes(("\n".join(head) + "\n").encode() + body)
    return np.stack([v["x"], v["y"], v["z"]], 1)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("with_faces", [True, False])
def test_ply_with_extra_vertex_properties(tmp_path, fmt, with_faces):
    path = tmp_path / "scan.ply"
    xyz = _ply(path, fmt, with_faces)
    points = read_mesh_or_points(path, mesh_points=100)
    if with_faces:
        assert points.shape == (100, 3) and on_unit_square(points)
    else:
        assert np.array_equal(points, xyz)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_ply_faces_with_texture_coordinate_lists(tmp_path, fmt):
    """MeshLab writes per-corner UVs as a second face list; trimesh's ASCII reader fails on it."""
    head = ("ply\nformat {fmt} 1.0\ncomment TextureFile tex.png\nelement vertex 4\nproperty float x\n"
            "property float y\nproperty float z\nelement face 2\nproperty list uchar int vertex_indices\n"
            "property list uchar float texcoord\nproperty uchar flags\nend_header\n").format(fmt=fmt).encode()
    if fmt == "ascii":  # a quad and a triangle: trimesh's ASCII reader fails on these
        body = (SQUARE + "4 0 1 2 3 8 0 0 1 0 1 1 0 1 7\n3 0 1 2 6 0 0 1 0 1 1 7\n").encode()
    else:
        body = (np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], "<f4").tobytes()
                + struct.pack("<B4iB8fB", 4, 0, 1, 2, 3, 8, 0, 0, 1, 0, 1, 1, 0, 1, 7)
                + struct.pack("<B3iB6fB", 3, 0, 1, 2, 6, 0, 0, 1, 0, 1, 1, 7))
    (tmp_path / "tex.ply").write_bytes(head + body)
    points = read_mesh_or_points(tmp_path / "tex.ply", mesh_points=200)
    assert points.shape == (200, 3) and on_unit_square(points)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_the_fallback_ply_reader_agrees_with_the_definition(tmp_path, fmt):
    xyz = _ply(tmp_path / "scan.ply", fmt, with_faces=True)
    vertices, faces = read_ply(tmp_path / "scan.ply")
    assert np.array_equal(vertices, xyz) and faces.tolist() == [[0, 1, 2], [0, 2, 3]]


# ---------------------------------------------------------------------------------------- OBJ, STL

def test_obj_quads_texture_coordinates_and_normals(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("# exported\nmtllib none.mtl\no quad\n" + "".join(f"v {r}\n" for r in SQUARE.splitlines())
                    + "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\nusemtl none\ns off\n"
                    "f 1/1/1 2/2/1 3/3/1 4/4/1\n")
    points = read_mesh_or_points(path, mesh_points=200)
    assert points.shape == (200, 3) and on_unit_square(points)


def test_obj_negative_indices_in_several_objects(tmp_path):
    """trimesh alone maps both faces onto the last object's vertices; each object must keep its own."""
    path = tmp_path / "two.obj"
    path.write_text("o low\nv 0 0 0\nv 1 0 0\nv 1 1 0\nvn 0 0 1\nf -3//-1 -2//-1 -1//-1\n"
                    "g high\nv 0 0 1\nv 1 0 1\nv 1 1 1\nf -3 -2 -1\n")
    points = read_mesh_or_points(path, mesh_points=400)
    z = np.unique(points[:, 2])
    assert z.tolist() == [0.0, 1.0]  # both triangles are sampled (equal areas: ~200 points each)
    assert 150 < int((points[:, 2] == 0).sum()) < 250


def test_obj_several_objects_with_absolute_indices(tmp_path):
    path = tmp_path / "two.obj"
    path.write_text("o a\nv 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\no b\nv 0 0 1\nv 1 0 1\nv 1 1 1\nf 4 5 6\n")
    assert np.unique(read_mesh_or_points(path, mesh_points=400)[:, 2]).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("text", [
    "  v 0 0 0\n  v 1 0 0\n  v 1 1 0\n  v 0 1 0\n  f 1 2 3 4\n",  # indented statements
    "v\t0 0 0\nv\t1 0 0\nv\t1 1 0\nv\t0 1 0\nf\t-4 -3 -2 -1\n",  # tab after the keyword
    "v 0 0 0\r\nv 1 0 0\r\nv 1 1 0\r\nv 0 1 0\r\nf 1 2 3 4\r\n",  # CRLF
])
def test_obj_whitespace_variants_are_meshes_not_point_clouds(tmp_path, text):
    (tmp_path / "q.obj").write_bytes(text.encode())
    points = read_mesh_or_points(tmp_path / "q.obj", mesh_points=200)
    assert points.shape == (200, 3) and on_unit_square(points)


@pytest.mark.parametrize("file_type", ["stl", "stl_ascii"])
def test_stl_binary_and_ascii(tmp_path, file_type):
    box = trimesh.creation.box(extents=[2, 2, 2])
    path = tmp_path / "box.stl"
    path.write_bytes(box.export(file_type=file_type) if file_type == "stl"
                     else box.export(file_type=file_type).encode())
    points = read_mesh_or_points(path, mesh_points=300)
    assert points.shape == (300, 3)
    assert np.allclose(np.abs(points).max(1), 1, atol=1e-5)  # on the surface of the cube [-1, 1]^3


# ---------------------------------------------------------------------------------------- text points

XYZ = np.array([[0.5, -1.25, 2.0], [3.0, 0.0, -0.75], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("name, text", [
    ("three.xyz", "0.5 -1.25 2.0\n3.0 0.0 -0.75\n1.0 1.0 1.0\n"),
    ("header.txt", "x,y,z\n0.5,-1.25,2.0\n3.0,0.0,-0.75\n1.0,1.0,1.0\n"),
    ("leica.pts", "3\n0.5 -1.25 2.0 -1203 255 0 0\n3.0 0.0 -0.75 17 0 255 0\n1.0 1.0 1.0 0 0 0 255\n"),
    ("intensity.xyz", "0.5 -1.25 2.0 0.8\n3.0 0.0 -0.75 0.1\n1.0 1.0 1.0 0.5\n"),
    ("cloudcompare.txt", "//X,Y,Z,R,G,B,Nx,Ny,Nz\n0.5,-1.25,2.0,1,2,3,0,0,1\n3.0,0.0,-0.75,1,2,3,0,0,1\n"
                         "1.0,1.0,1.0,1,2,3,0,0,1\n"),
    ("semicolon.txt", "X;Y;Z;Intensity\n0.5;-1.25;2.0;3\n3.0;0.0;-0.75;4\n1.0;1.0;1.0;5\n"),
    ("crlf.xyz", "# scan\r\n0.5\t-1.25\t2.0\r\n\r\n3.0\t0.0\t-0.75\r\n1.0\t1.0\t1.0\r\n"),
])
def test_text_point_files(tmp_path, name, text):
    (tmp_path / name).write_bytes(text.encode())
    assert np.array_equal(read_mesh_or_points(tmp_path / name, 999), XYZ.astype(np.float32))


def test_text_points_a_bad_row_after_the_data_starts_is_named(tmp_path):
    (tmp_path / "bad.xyz").write_text("x y z\n0 0 0\n1 oops 2\n")
    with pytest.raises(ValueError, match=r"bad\.xyz, line 3: not a number in '1 oops 2'"):
        read_mesh_or_points(tmp_path / "bad.xyz", 100)


# ---------------------------------------------------------------------------------------- NumPy

def test_numpy_clouds(tmp_path):
    rows = np.concatenate([XYZ, np.ones((3, 3))], 1)
    np.save(tmp_path / "batched.npy", rows[None])  # (1, N, 6)
    structured = np.zeros(3, [("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "f4")])
    structured["x"], structured["y"], structured["z"] = XYZ.T
    np.save(tmp_path / "fields.npy", structured)
    np.savez(tmp_path / "named.npz", labels=np.arange(3), points=rows)
    np.savez_compressed(tmp_path / "single.npz", cloud=rows)
    for name in ("batched.npy", "fields.npy", "named.npz", "single.npz"):
        assert np.array_equal(read_mesh_or_points(tmp_path / name, 999), XYZ.astype(np.float32)), name


def test_numpy_clouds_it_cannot_read_are_named(tmp_path):
    np.savez(tmp_path / "two.npz", a=XYZ, b=XYZ)
    with pytest.raises(ValueError, match=r"two\.npz: cannot tell which array holds the points "
                                         r"\(arrays: a, b\); name it 'points'"):
        read_mesh_or_points(tmp_path / "two.npz", 100)
    np.savez(tmp_path / "flat.npz", points=np.ones(5))
    with pytest.raises(ValueError, match=r"flat\.npz \(array 'points'\): expected a numeric \(N, 3\+\) "
                                         r"array of x,y,z\[,\.\.\.\] rows, got shape \(5,\)"):
        read_mesh_or_points(tmp_path / "flat.npz", 100)


# ---------------------------------------------------------------------------------------- scales

def test_georeferenced_coordinates_keep_their_detail(tmp_path):
    """UTM-like coordinates (millions of metres) with millimetre detail: float32 alone would round
    them to 0.25-0.5 m steps; the reader moves them to the bounding-box centre in float64 first."""
    rng = np.random.default_rng(0)
    local = rng.uniform(-0.5, 0.5, size=(500, 3))
    offset = np.array([500000.0, 4000000.0, 120.0])
    np.savetxt(tmp_path / "utm.xyz", local + offset, fmt="%.4f")
    points = read_mesh_or_points(tmp_path / "utm.xyz", 999)
    ref = np.loadtxt(tmp_path / "utm.xyz")
    ref = ref - (ref.min(0) + ref.max(0)) / 2
    # float32 rounding of values below 1 in magnitude: at most 2^-24 relative, i.e. < 6e-8 absolute
    np.testing.assert_allclose(points, ref, rtol=0, atol=6e-8)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_scales_over_twelve_orders_of_magnitude_give_the_same_cloud(tmp_path, scale):
    box = trimesh.creation.box(extents=[1, 2, 3])
    box.apply_scale(scale)
    box.export(tmp_path / "box.ply")
    x = load_points(tmp_path / "box.ply", num_points=64, mesh_points=500).double()
    ref_box = trimesh.creation.box(extents=[1, 2, 3])
    ref_box.export(tmp_path / "ref.ply")
    ref = load_points(tmp_path / "ref.ply", num_points=64, mesh_points=500).double()
    # the same sampled surface points up to the float32 rounding of the scaled coordinates
    np.testing.assert_allclose(x.numpy(), ref.numpy(), atol=1e-5)
