"""Gaussian splats as PLY files in the layout of the original 3D Gaussian splatting code.

One ``vertex`` element, binary little endian, every property ``float`` (float32), in this order::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3 (K - 1) - 1)  opacity  scale_0..2  rot_0..3

``nx ny nz`` are zeros; ``f_rest`` is channel-major (all red coefficients of degrees >= 1, then green, then
blue); ``opacity`` is the logit, ``scale_*`` the log scale and ``rot_*`` the quaternion wxyz, all raw
parameters as the renderer stores them. SuperSplat, antimatter15/splat, gsplat.js (gradio's Model3D) and
the original SIBR viewer read this layout. :func:`load_ply` also reads files without normals (gsplat's
exporter), with the properties in any order and of any numeric type.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from gendistill.errors import UserError
from gendistill.render.gaussians import GaussianParams

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_ENDIAN = {"binary_little_endian": "<", "binary_big_endian": ">"}


def ply_property_names(n_rest: int) -> list[str]:
    """The vertex properties, in file order, for ``n_rest`` higher-degree SH coefficients per channel."""
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(3 * n_rest)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
            + [f"rot_{i}" for i in range(4)])


def save_ply(params: GaussianParams, path: str | Path) -> Path:
    """Write ``params`` to ``path`` (parent folders are created); returns the path."""
    path = Path(path)
    n, n_rest = len(params), params.shN.shape[1]
    with torch.no_grad():
        columns = [params.means, torch.zeros_like(params.means), params.sh0[:, 0],
                   params.shN.transpose(1, 2).reshape(n, 3 * n_rest), params.opacity_logits[:, None],
                   params.log_scales, params.quats]
        data = torch.cat([c.detach().float().cpu() for c in columns], dim=1).numpy().astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in ply_property_names(n_rest)] + ["end_header"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())
    return path


def load_ply(path: str | Path) -> GaussianParams:
    """Read a 3D Gaussian splatting PLY file written by :func:`save_ply` or another 3DGS tool."""
    path = Path(path)
    return _params_from_vertices(read_ply_vertices(path), path)


def read_ply_vertices(path: str | Path) -> np.ndarray:
    """The vertex element of a binary PLY file (it must come first) as a numpy structured array whose field
    names are the PLY property names; one-line UserErrors for a missing, foreign or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no PLY file at {path}")
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise UserError(f"{path} is not a PLY file (it must start with 'ply' and have an 'end_header' line)")
    dtype, count = _vertex_dtype(raw[:end].decode("ascii", errors="replace").splitlines(), path)
    body = raw[end + len(b"end_header\n"):]
    if len(body) < count * dtype.itemsize:
        raise UserError(f"{path} is truncated: {count} vertices need {count * dtype.itemsize} bytes, "
                        f"found {len(body)}")
    return np.frombuffer(body, dtype=dtype, count=count)


def _vertex_dtype(lines: list[str], path: Path) -> tuple[np.dtype, int]:
    """A numpy structured dtype for the vertex element (which must come first) and its count."""
    endian, fields, count, element = None, [], None, None
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if words[1] not in _ENDIAN:
                raise UserError(f"{path}: PLY format {words[1]!r} is not supported; use binary_little_endian")
            endian = _ENDIAN[words[1]]
        elif words[0] == "element":
            element = words[1]
            if element == "vertex":
                count = int(words[2])
            elif count is None:
                raise UserError(f"{path}: the 'vertex' element must come first, found {element!r}")
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise UserError(f"{path}: vertex property {' '.join(words[1:])!r} is not a scalar number")
            fields.append((words[2], endian + _PLY_TYPES[words[1]]))
    if endian is None or count is None:
        raise UserError(f"{path}: the PLY header needs a 'format' line and an 'element vertex' line")
    return np.dtype(fields), count


def _params_from_vertices(v: np.ndarray, path: Path) -> GaussianParams:
    names = set(v.dtype.names)
    n_rest_total = sum(1 for name in names if name.startswith("f_rest_"))
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"] + [f"f_rest_{i}" for i in range(n_rest_total)]
    missing = [name for name in required if name not in names]
    if missing:
        raise UserError(f"{path} is not a Gaussian splat PLY: missing vertex properties {', '.join(missing)}")
    n_rest = n_rest_total // 3
    if n_rest_total % 3 or math.isqrt(n_rest + 1) ** 2 != n_rest + 1 or math.isqrt(n_rest + 1) > 4:
        raise UserError(f"{path}: {n_rest_total} f_rest properties do not make SH degree 0-3 "
                        f"(allowed: 0, 9, 24 or 45)")

    def columns(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([v[k].astype(np.float32) for k in keys], axis=1))

    n = len(v)
    rest = columns(*[f"f_rest_{i}" for i in range(n_rest_total)]) if n_rest else torch.zeros(n, 0)
    return GaussianParams(
        means=columns("x", "y", "z"), log_scales=columns("scale_0", "scale_1", "scale_2"),
        quats=columns("rot_0", "rot_1", "rot_2", "rot_3"), opacity_logits=columns("opacity")[:, 0],
        sh0=columns("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        shN=rest.reshape(n, 3, n_rest).transpose(1, 2).contiguous())
