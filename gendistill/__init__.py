"""gendistill: distil diffusion models into few-step generators and into 3D assets.

Importing the package changes nothing in the process (no environment variables, no torch ops). The
``gendistill`` command prepares its process itself; a library user who wants the same setup calls
:func:`gendistill.compat.prepare_process` once, before importing torch or diffusers.
"""

__version__ = "0.1.0"
