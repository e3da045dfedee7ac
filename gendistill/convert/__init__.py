"""Fitting radiance fields to images and converting them between architectures and to/from 3D Gaussians: the
library (recipes for the one trainer; the jobs that run them are in :mod:`gendistill.jobs.convert`).

- :mod:`~gendistill.convert.data`: multi-view images with cameras (shapes renders, transforms.json folders);
- :mod:`~gendistill.convert.fit`: :class:`~gendistill.convert.fit.NerfFitRecipe`, a field fitted to images;
- :mod:`~gendistill.convert.pvd`: :class:`~gendistill.convert.pvd.PVDRecipe`, progressive volume distillation
  between fields (PVD, PVD-AL);
- :mod:`~gendistill.convert.to_gaussians`: splats placed on a field's density and
  :class:`~gendistill.convert.to_gaussians.SplatFitRecipe`, splats fitted to images;
- :mod:`~gendistill.convert.measure`: deterministic renders and PSNR.
"""
