"""Scenes that score distillation optimises: 3D Gaussians (``gaussians``) and radiance fields (``nerf``).
Each is built by its own config section (``kind:``) and implements ``gendistill.render.scene.Scene``."""
