"""Multi-view training data for radiance fields: shapes-world renders, or a transforms.json folder.

A :class:`MultiViewData` is C images (C, 3, H, W) in [0, 1], composited over ``background``, with their
:class:`~gendistill.render.cameras.Cameras` (OpenCV axes, world-to-camera viewmats).

The transforms.json layout (nerfstudio / instant-ngp / NeRF-synthetic): ``frames[i].file_path`` (relative to
the folder; ``.png`` is appended when it has no extension) and ``frames[i].transform_matrix``, a 4x4
camera-to-world matrix in OpenGL camera axes (x right, y up, z backward); intrinsics are ``camera_angle_x``
(horizontal field of view, principal point at the image centre) or ``fl_x``/``fl_y``/``cx``/``cy``, at the top
level or per frame. OpenGL -> OpenCV flips the camera's y and z axes: ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``,
and the viewmat is its inverse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gendistill.errors import UserError, check_range
from gendistill.render.cameras import DISTANCE, FOV_DEG, Cameras, stack_cameras
from gendistill.render.rig import ELEVATION_RANGE_DEG, OrbitRig

OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
"""Right-multiplying a camera-to-world matrix by this flips its camera y and z axes (OpenGL <-> OpenCV)."""


@dataclass(frozen=True)
class MultiViewData:
    """Images and the cameras that saw them."""

    cameras: Cameras
    """C cameras sharing one image size."""
    images: Tensor
    """(C, 3, H, W) in [0, 1], composited over ``background``."""
    background: Tensor
    """(3,) colour behind the object (white for the shapes world)."""

    def __len__(self) -> int:
        return len(self.cameras)

    def subset(self, index) -> MultiViewData:
        """The views at ``index`` (a slice or an index tensor)."""
        return MultiViewData(self.cameras[index], self.images[index], self.background)


def sphere_cameras(n: int, generator: torch.Generator, *, size: int = 64, distance: float = DISTANCE,
                   fov_deg: float = FOV_DEG, elevation_range_deg: tuple[float, float] = ELEVATION_RANGE_DEG) -> Cameras:
    """``n`` cameras looking at the origin from random azimuths and elevations (:meth:`OrbitRig.sample`)."""
    rig = OrbitRig(distance, fov_deg, tuple(elevation_range_deg), size, size)
    return stack_cameras(rig.sample(n, generator))


def shapes_views(caption: str, n_views: int, generator: torch.Generator, size: int = 64) -> MultiViewData:
    """Analytic renders of a shapes caption ("a red cube") from ``n_views`` random cameras (the same ones
    :func:`sphere_cameras` draws from this generator state), white background."""
    from gendistill.domains.shapes import parse_caption, render_batch

    check_range("n_views", n_views, 1, None)
    scene = parse_caption(caption)
    cams = OrbitRig(width=size, height=size).sample(n_views, generator)
    images = render_batch([scene] * n_views, cams).rgb
    return MultiViewData(stack_cameras(cams), images, torch.ones(3))


def load_transforms(folder: str | Path, background: Tensor | None = None) -> MultiViewData:
    """Read a transforms.json folder (see the module docstring); RGBA images are composited over
    ``background`` (default white). Errors in the folder are UserErrors that name the file."""
    folder = Path(folder)
    meta_path = folder / "transforms.json"
    if not meta_path.is_file():
        raise UserError(f"no transforms.json in {folder}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{meta_path} is not valid JSON ({err.msg}, line {err.lineno})") from None
    frames = meta.get("frames") or []
    if not frames:
        raise UserError(f"{meta_path} has no frames")
    background = torch.ones(3) if background is None else background
    images, viewmats, Ks = [], [], []  # noqa: N806
    for i, frame in enumerate(frames):
        image = _read_image(folder, frame.get("file_path"), background, meta_path, i)
        images.append(image)
        viewmats.append(opengl_c2w_to_viewmat(_matrix(frame, meta_path, i)))
        Ks.append(_intrinsics({**meta, **frame}, image.shape[2], image.shape[1], meta_path))
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise UserError(f"{meta_path}: all images must have one size, found {sorted(sizes)}")
    h, w = images[0].shape[1:]
    cameras = Cameras(torch.stack(viewmats), torch.stack(Ks), w, h)
    return MultiViewData(cameras, torch.stack(images), background)


def opengl_c2w_to_viewmat(c2w: Tensor) -> Tensor:
    """World-to-camera (4, 4) float32 in OpenCV axes from a camera-to-world matrix in OpenGL axes."""
    c2w = c2w.double()
    if c2w.shape == (3, 4):
        c2w = torch.cat([c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    return torch.linalg.inv(c2w @ OPENGL_TO_OPENCV).float()


def viewmat_to_opengl_c2w(viewmat: Tensor) -> Tensor:
    """The inverse of :func:`opengl_c2w_to_viewmat` (for writing transforms.json)."""
    return (torch.linalg.inv(viewmat.double()) @ OPENGL_TO_OPENCV).float()


def _matrix(frame: dict, meta_path: Path, i: int) -> Tensor:
    try:
        m = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{meta_path}: frame {i} needs a 4x4 transform_matrix") from None
    if m.shape not in ((4, 4), (3, 4)):
        raise UserError(f"{meta_path}: frame {i} transform_matrix must be 4x4, got {tuple(m.shape)}")
    return m


def _intrinsics(meta: dict, width: int, height: int, meta_path: Path) -> Tensor:
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
        fy = float(meta.get("fl_y", fx))
        cx, cy = float(meta.get("cx", width / 2)), float(meta.get("cy", height / 2))
    elif "camera_angle_x" in meta:
        fx = 0.5 * width / math.tan(0.5 * float(meta["camera_angle_x"]))
        fy = 0.5 * height / math.tan(0.5 * float(meta["camera_angle_y"])) if "camera_angle_y" in meta else fx
        cx, cy = width / 2, height / 2
    else:
        raise UserError(f"{meta_path}: needs camera_angle_x or fl_x/fl_y/cx/cy for the intrinsics")
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _read_image(folder: Path, file_path, background: Tensor, meta_path: Path, i: int) -> Tensor:
    if not isinstance(file_path, str):
        raise UserError(f"{meta_path}: frame {i} needs a file_path")
    path = folder / file_path
    if not path.suffix:
        path = path.with_suffix(".png")
    if not path.is_file():
        raise UserError(f"{meta_path}: frame {i} image {path} does not exist")
    array = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
    rgba = torch.from_numpy(array).permute(2, 0, 1)
    rgb, alpha = rgba[:3], rgba[3:]
    return rgb * alpha + background.view(3, 1, 1) * (1 - alpha)


def write_transforms(data: MultiViewData, folder: str | Path) -> Path:
    """Write ``data`` as a transforms.json folder (PNG frames, fl_x/fl_y/cx/cy per frame); returns the folder."""
    from gendistill.render.images import save_png

    folder = Path(folder)
    frames = []
    for i in range(len(data)):
        save_png(data.images[i], folder / "images" / f"frame_{i:04d}.png")
        K = data.cameras.Ks[i]  # noqa: N806
        frames.append({"file_path": f"images/frame_{i:04d}.png", "fl_x": K[0, 0].item(), "fl_y": K[1, 1].item(),
                       "cx": K[0, 2].item(), "cy": K[1, 2].item(),
                       "transform_matrix": viewmat_to_opengl_c2w(data.cameras.viewmats[i]).tolist()})
    meta = {"w": data.cameras.width, "h": data.cameras.height, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    return folder
