"""Radiance fields (NeRFs) from nerfstudio's field components, their volume renderer and checkpoints.

nerfstudio is optional (``pip install gendistill[nerf]``): it is imported when a field is built, and its
absence is a UserError that says how to install it.
"""

from gendistill.render.nerf.checkpoint import load_field, read_field_config, save_field
from gendistill.render.nerf.fields import ARCHITECTURES, FieldConfig, RadianceField, build_field
from gendistill.render.nerf.volume import RayRender, camera_rays, intersect_cube, render_cameras, render_rays

__all__ = [
    "ARCHITECTURES", "FieldConfig", "RadianceField", "RayRender", "build_field", "camera_rays", "intersect_cube",
    "load_field", "read_field_config", "render_cameras", "render_rays", "save_field",
]
