"""Fitting radiance fields to images and converting them between architectures and to/from 3D Gaussians.

- :mod:`~gendistill.convert.data`: multi-view images with cameras (shapes renders, transforms.json folders);
- :mod:`~gendistill.convert.fit`: fit a field to images (``gendistill fit-nerf``);
- :mod:`~gendistill.convert.pvd`: progressive volume distillation between fields (``gendistill convert-nerf``);
- :mod:`~gendistill.convert.to_gaussians`: fields -> Gaussian splats and back;
- :mod:`~gendistill.convert.run`: the two commands' configs and outputs.
"""
