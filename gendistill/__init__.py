"""gendistill: distil diffusion models into few-step generators and into 3D assets."""

__version__ = "0.1.0"
