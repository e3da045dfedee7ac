"""Marching-cubes meshes of radiance fields: the surface is where the density says, faces point outwards,
colours come from the field, and the PLY / OBJ / GLB files are well formed."""

import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("skimage")

from gendistill.errors import UserError  # noqa: E402
from gendistill.render.nerf.mesh import extract_mesh, load_mesh_ply, save_mesh  # noqa: E402

pytestmark = pytest.mark.nerf


class SphereField(nn.Module):
    """Density ``peak`` inside a ball of ``radius`` (smooth edge), 0 outside; colour = position mapped to
    [0, 1]. Duck-types what extract_mesh needs from a RadianceField."""

    def __init__(self, radius=0.5, peak=40.0, bound=1.0):
        super().__init__()
        self.radius, self.peak = radius, peak
        self.config = SimpleNamespace(bound=bound)
        self.unused = nn.Parameter(torch.zeros(1))

    def density(self, x):
        return self.peak * torch.sigmoid((self.radius - x.norm(dim=-1)) * 60.0)

    def forward(self, x, directions=None):
        return self.density(x), ((x + 1.0) / 2.0).clamp(0, 1)


def test_the_mesh_of_a_ball_lies_on_its_surface_faces_outwards_and_takes_the_field_colours():
    field, resolution = SphereField(), 41
    mesh = extract_mesh(field, resolution=resolution, threshold=20.0)  # half the peak: the ball's edge
    spacing = 2.0 / (resolution - 1)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert len(mesh.faces) > 500 and np.abs(radii - 0.5).max() < spacing
    v = mesh.vertices[mesh.faces]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert (np.einsum("fi,fi->f", normals, v.mean(axis=1)) > 0).all()
    expected = field(torch.from_numpy(mesh.vertices))[1].numpy()
    assert np.allclose(mesh.colours, expected, atol=1e-6)


def test_a_field_that_fills_its_cube_gets_a_closed_box_and_an_empty_one_no_mesh():
    full = SphereField(radius=10.0, bound=0.8)  # density everywhere inside the cube, zero outside it
    box = extract_mesh(full, resolution=9, threshold=20.0)
    assert len(box.faces) > 0 and np.abs(box.vertices).max() <= 0.8 + 0.2 + 1e-6
    assert np.isclose(np.abs(box.vertices).max(axis=1).min(), 0.9, atol=0.11)  # on the padded layer's midway
    empty = extract_mesh(SphereField(peak=1.0), resolution=9, threshold=20.0)
    assert empty.is_empty and empty.vertices.shape == (0, 3)


def test_ply_round_trip_obj_and_glb_are_well_formed(tmp_path):
    mesh = extract_mesh(SphereField(), resolution=17, threshold=20.0)
    ply, obj, glb = save_mesh(mesh, tmp_path / "scene_mesh", ("ply", "obj", "glb"))
    assert [p.name for p in (ply, obj, glb)] == ["scene_mesh.ply", "scene_mesh.obj", "scene_mesh.glb"]
    loaded = load_mesh_ply(ply)
    assert np.array_equal(loaded.faces, mesh.faces) and np.array_equal(loaded.vertices, mesh.vertices)
    assert np.abs(loaded.colours - mesh.colours).max() <= 0.5 / 255 + 1e-6
    lines = obj.read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == len(mesh.vertices)
    faces = [list(map(int, line.split()[1:])) for line in lines if line.startswith("f ")]
    assert np.array_equal(np.array(faces) - 1, mesh.faces)
    raw = glb.read_bytes()
    magic, version, length = struct.unpack("<4sII", raw[:12])
    assert (magic, version, length) == (b"glTF", 2, len(raw))
    json_len, json_type = struct.unpack("<I4s", raw[12:20])
    gltf = json.loads(raw[20:20 + json_len])
    assert json_type == b"JSON" and gltf["accessors"][0]["count"] == len(mesh.vertices)
    assert gltf["accessors"][2]["count"] == 3 * len(mesh.faces)
    bin_start = 20 + json_len + 8
    positions = np.frombuffer(raw, np.float32, 3 * len(mesh.vertices), bin_start).reshape(-1, 3)
    x, y, z = mesh.vertices.T  # glTF is y up: (x, y, z) -> (x, z, -y)
    assert np.allclose(positions, np.stack([x, z, -y], axis=1))
    with pytest.raises(UserError, match="unknown mesh format 'stl'"):
        save_mesh(mesh, tmp_path / "m", ("stl",))
