"""``gendistill edit-3d``: text-driven editing of a 3D Gaussian scene, localised by attention (GSEditPro)."""
