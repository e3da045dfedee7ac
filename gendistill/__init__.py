"""gendistill: distil diffusion models into few-step generators and into 3D assets."""

from gendistill.compat.torchvision_ops import define_missing_torchvision_ops

# diffusers and transformers import torchvision whenever it is installed; under CPU torch that import
# fails unless its op schemas exist. Every gendistill module reaches them through this package.
define_missing_torchvision_ops()

__version__ = "0.1.0"
