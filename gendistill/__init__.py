"""gendistill: distil diffusion models into few-step generators and into 3D assets."""

import os

# OpenMP threads that busy-wait make torch 5-10x slower when another process shares the cores (measured on
# 2-core machines); passive waiting costs little when they are free. Only a default: the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gendistill.compat.torchvision_ops import define_missing_torchvision_ops  # noqa: E402

# diffusers and transformers import torchvision whenever it is installed; under CPU torch that import
# fails unless its op schemas exist. Every gendistill module reaches them through this package.
define_missing_torchvision_ops()

__version__ = "0.1.0"
