"""The shapes world (DESIGN.md §5): five primitives in eight colours, an exact ray caster, captions, data.

World z is up, the object sits at the origin and its front faces +x (azimuth 0); cameras are the render
layer's one camera model (gendistill.render.cameras, gsplat's OpenCV convention; see camera.py).
"""

from gendistill.domains.shapes.camera import (
    DISTANCE,
    ELEVATION_RANGE_DEG,
    FOV_DEG,
    Camera,
    CameraBatch,
    camera_from_uniform,
    orbit_cameras,
    sample_cameras,
    stack_cameras,
)
from gendistill.domains.shapes.captions import (
    VIEW_PHRASES,
    VOCABULARY,
    ShapesViewPrompter,
    caption,
    parse_caption,
    parse_view,
    view_phrase,
)
from gendistill.domains.shapes.dataset import SPLITS, ShapeBatch, fixed_split, make_batch, split_generator
from gendistill.domains.shapes.intersect import BOUNDING_RADIUS, RayHit
from gendistill.domains.shapes.raycast import (
    AMBIENT,
    DEFAULT_SUPERSAMPLE,
    DIFFUSE,
    LIGHT_DIRECTION,
    ShapeRender,
    camera_rays,
    render,
    render_batch,
    shading,
)
from gendistill.domains.shapes.scene import (
    COLOURS,
    SHAPES,
    Scene,
    all_scenes,
    colour_index,
    scene_from_indices,
    shape_index,
)

__all__ = [
    "AMBIENT", "BOUNDING_RADIUS", "COLOURS", "DEFAULT_SUPERSAMPLE", "DIFFUSE", "DISTANCE", "ELEVATION_RANGE_DEG", "FOV_DEG",
    "LIGHT_DIRECTION", "SHAPES", "SPLITS", "VIEW_PHRASES", "VOCABULARY",
    "Camera", "CameraBatch", "RayHit", "Scene", "ShapeBatch", "ShapeRender",
    "ShapesViewPrompter",
    "all_scenes", "camera_from_uniform", "camera_rays", "caption", "colour_index", "fixed_split",
    "make_batch", "orbit_cameras", "parse_caption", "parse_view", "render", "render_batch",
    "sample_cameras", "scene_from_indices", "shading", "shape_index", "split_generator", "stack_cameras",
    "view_phrase",
]
