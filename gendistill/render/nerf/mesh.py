"""A radiance field as a triangle mesh: marching cubes on its density grid, vertex colours from the field.

The density is sampled on a regular grid over the field's cube ``[-bound, bound]^3`` (plus one empty layer
around it, so surfaces that touch the cube close), ``skimage.measure.marching_cubes`` extracts the iso-surface
``density == threshold``, and each vertex gets the field's colour there. Writers:

- :func:`save_mesh_ply`: binary little-endian PLY, float x/y/z, uchar red/green/blue, triangle faces (what
  gradio's Model3D, MeshLab and Blender read), in the field's world coordinates (z up in the shapes world);
- :func:`save_mesh_obj`: Wavefront OBJ with the common ``v x y z r g b`` vertex-colour extension, same axes;
- :func:`save_mesh_glb`: binary glTF 2.0 with COLOR_0 and an unlit material; glTF is y up, so the world's
  z-up axes are rotated (x, y, z) -> (x, z, -y).

scikit-image comes with the ``nerf`` extra.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gendistill.errors import UserError


@dataclass(frozen=True)
class TriangleMesh:
    """Vertices (V, 3) float32 in world coordinates, faces (F, 3) int64 (counter-clockwise seen from
    outside), colours (V, 3) float32 in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray

    @property
    def is_empty(self) -> bool:
        return len(self.faces) == 0


def empty_mesh() -> TriangleMesh:
    return TriangleMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32))


def grid_axis(bound: float, resolution: int) -> Tensor:
    """The grid's coordinates along one axis: ``resolution`` points spanning [-bound, bound]."""
    return torch.linspace(-bound, bound, resolution)


@torch.no_grad()
def density_grid(field, resolution: int, chunk: int = 1 << 16) -> Tensor:
    """Density (R, R, R) of ``field`` at ``grid_axis`` points; index [i, j, k] is (x_i, y_j, z_k)."""
    param = next(field.parameters())
    axis = grid_axis(field.config.bound, resolution).to(param)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = [field.density(points[s:s + chunk]) for s in range(0, points.shape[0], chunk)]
    return torch.cat(values).view(resolution, resolution, resolution).float().cpu()


@torch.no_grad()
def extract_mesh(field, resolution: int = 128, threshold: float = 10.0, chunk: int = 1 << 16) -> TriangleMesh:
    """The ``density == threshold`` surface of ``field`` (anything with ``density(x)``, ``forward(x, d)``,
    ``parameters()`` and ``config.bound``) on a ``resolution``^3 grid; empty when the density never crosses
    the threshold."""
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise UserError("mesh export needs scikit-image: pip install 'gendistill[nerf]'") from None
    if resolution < 2:
        raise UserError(f"mesh resolution must be at least 2, got {resolution}")
    bound = field.config.bound
    grid = torch.nn.functional.pad(density_grid(field, resolution, chunk), (1, 1, 1, 1, 1, 1)).numpy()
    if not grid.min() < threshold < grid.max():
        return empty_mesh()
    spacing = 2.0 * bound / (resolution - 1)
    verts, faces, _, _ = marching_cubes(grid, level=threshold, spacing=(spacing,) * 3)
    vertices = (verts - spacing - bound).astype(np.float32)  # the padding layer sits one spacing outside
    param = next(field.parameters())
    xyz = torch.from_numpy(vertices).to(param)
    colours = torch.cat([field(xyz[s:s + chunk])[1] for s in range(0, xyz.shape[0], chunk)])
    # marching_cubes orients faces for rising values; the density rises inwards, so flip to face outwards
    return TriangleMesh(vertices, faces[:, ::-1].astype(np.int64).copy(),
                        colours.clamp(0, 1).float().cpu().numpy())


def _colour_bytes(colours: np.ndarray) -> np.ndarray:
    return np.clip(np.round(colours * 255.0), 0, 255).astype(np.uint8)


def save_mesh_ply(mesh: TriangleMesh, path: str | Path) -> Path:
    """Binary little-endian PLY with vertex colours and triangle faces."""
    path = Path(path)
    vertex = np.zeros(len(mesh.vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                                                 ("green", "u1"), ("blue", "u1")])
    for i, key in enumerate("xyz"):
        vertex[key] = mesh.vertices[:, i]
    for i, key in enumerate(("red", "green", "blue")):
        vertex[key] = _colour_bytes(mesh.colours)[:, i]
    face = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"], face["v"] = 3, mesh.faces
    header = (f"ply\nformat binary_little_endian 1.0\ncomment gendistill radiance field mesh\n"
              f"element vertex {len(vertex)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(face)}\nproperty list uchar int vertex_indices\nend_header\n")
    path.write_bytes(header.encode("ascii") + vertex.tobytes() + face.tobytes())
    return path


def load_mesh_ply(path: str | Path) -> TriangleMesh:
    """Read back a PLY written by :func:`save_mesh_ply`."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element ")}
    vertex = np.frombuffer(raw, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                       ("blue", "u1")], count=counts["vertex"], offset=end)
    face = np.frombuffer(raw, dtype=[("n", "u1"), ("v", "<i4", (3,))], count=counts["face"],
                         offset=end + vertex.nbytes)
    vertices = np.stack([vertex[k] for k in "xyz"], axis=1)
    colours = np.stack([vertex[k] for k in ("red", "green", "blue")], axis=1).astype(np.float32) / 255.0
    return TriangleMesh(vertices, face["v"].astype(np.int64), colours)


def save_mesh_obj(mesh: TriangleMesh, path: str | Path) -> Path:
    """Wavefront OBJ, ``v x y z r g b`` (colours in [0, 1]) and 1-based triangle faces."""
    path = Path(path)
    lines = ["# gendistill radiance field mesh"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f} {r:.4f} {g:.4f} {b:.4f}"
              for (x, y, z), (r, g, b) in zip(mesh.vertices.tolist(), mesh.colours.tolist())]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces.tolist()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def save_mesh_glb(mesh: TriangleMesh, path: str | Path) -> Path:
    """Binary glTF 2.0: one triangle primitive with POSITION, COLOR_0 and uint32 indices, unlit material."""
    path = Path(path)
    positions = np.ascontiguousarray(mesh.vertices[:, [0, 2, 1]] * np.array([1, 1, -1], np.float32), np.float32)
    colours = np.ascontiguousarray(mesh.colours, np.float32)
    indices = np.ascontiguousarray(mesh.faces, np.uint32).reshape(-1)
    blobs = [positions.tobytes(), colours.tobytes(), indices.tobytes()]
    views, offset = [], 0
    for blob, target in zip(blobs, (34962, 34962, 34963)):  # ARRAY_BUFFER, ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target})
        offset += len(_pad4(blob, b"\0"))
    lo = positions.min(0).tolist() if len(positions) else [0.0] * 3
    hi = positions.max(0).tolist() if len(positions) else [0.0] * 3
    gltf = {
        "asset": {"version": "2.0", "generator": "gendistill"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "materials": [{"pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0},
                       "extensions": {"KHR_materials_unlit": {}}, "doubleSided": True}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2, "material": 0,
                                    "mode": 4}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3", "min": lo, "max": hi},
            {"bufferView": 1, "componentType": 5126, "count": len(colours), "type": "VEC3"},
            {"bufferView": 2, "componentType": 5125, "count": len(indices), "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    json_chunk = _pad4(json.dumps(gltf, separators=(",", ":")).encode(), b" ")
    bin_chunk = b"".join(_pad4(blob, b"\0") for blob in blobs)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(json_chunk), b"JSON")
                     + json_chunk + struct.pack("<I4s", len(bin_chunk), b"BIN\0") + bin_chunk)
    return path


MESH_WRITERS = {"ply": save_mesh_ply, "obj": save_mesh_obj, "glb": save_mesh_glb}
"""Mesh file formats by extension."""


def save_mesh(mesh: TriangleMesh, stem: str | Path, formats=("ply",)) -> list[Path]:
    """Write ``stem.<format>`` for each of ``formats`` (ply, obj, glb); returns the paths in that order."""
    unknown = [f for f in formats if f not in MESH_WRITERS]
    if unknown:
        raise UserError(f"unknown mesh format {unknown[0]!r}; choose from: {', '.join(MESH_WRITERS)}")
    stem = Path(stem)
    return [MESH_WRITERS[f](mesh, stem.with_name(f"{stem.name}.{f}")) for f in formats]
