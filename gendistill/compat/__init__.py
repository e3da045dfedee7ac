"""Workarounds for the environments gendistill runs in.

:func:`prepare_process` is the one process-wide setup the ``gendistill`` command (and the scripts in
``pipelines/``) performs before its heavy imports. Library users opt in by calling it themselves; importing
gendistill never does it for them.
"""

from __future__ import annotations

import os


def prepare_process() -> None:
    """Set up this process for gendistill; call it once, before torch, diffusers or transformers are imported.

    - ``OMP_WAIT_POLICY=PASSIVE`` unless already set: OpenMP threads that busy-wait make torch 5-10x slower
      when another process shares the cores (measured on 2-core machines); passive waiting costs little when
      they are free. OpenMP reads it when torch loads, so it only takes effect before ``import torch``.
    - declares torchvision's missing op schemas under a CPU-only torch
      (:func:`~gendistill.compat.torchvision_ops.define_missing_torchvision_ops`), so that diffusers and
      transformers, which import torchvision whenever it is installed, can be imported.
    - drops the third-party notices every run would print and that say nothing to a user (transformers'
      "requires torchvision (not installed); falling back" line), by exact wording on the logger that emits
      them (:mod:`gendistill.compat.notices`); other warnings still show.

    Safe to call more than once.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from gendistill.compat.notices import silence_known_notices

    silence_known_notices()
    from gendistill.compat.torchvision_ops import define_missing_torchvision_ops  # imports torch

    define_missing_torchvision_ops()
