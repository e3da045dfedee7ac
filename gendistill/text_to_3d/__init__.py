"""Text-to-3D by score distillation: 3D Gaussians or a NeRF optimised under a text-to-image model's score.

``run_text_to_3d(prompt, config, out_dir)`` is the job behind ``gendistill text-to-3d``; ``evaluate_run_dir``
is ``gendistill eval-3d``. ``representations.py`` is what the loop needs from a scene (``Scene3D``), with
``GaussianScene`` and ``NerfScene`` (the ``nerf`` extra).
"""

from gendistill.text_to_3d.config import Text3DConfig
from gendistill.text_to_3d.densify import Densifier, DensifyEvent, prune_masks
from gendistill.text_to_3d.evaluate3d import (Eval3DResult, evaluate_gaussians, evaluate_run_dir, evaluate_views,
                                              heldout_cameras)
from gendistill.text_to_3d.gaussian_scene import GaussianScene
from gendistill.text_to_3d.representations import Scene3D, create_scene, load_scene
from gendistill.text_to_3d.run import Text3DResult, run_text_to_3d

__all__ = ["Densifier", "DensifyEvent", "Eval3DResult", "GaussianScene", "Scene3D", "Text3DConfig", "Text3DResult",
           "create_scene", "evaluate_gaussians", "evaluate_run_dir", "evaluate_views", "heldout_cameras",
           "load_scene", "prune_masks", "run_text_to_3d"]
