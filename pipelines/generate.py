"""Sample images from any diffusers text-to-image folder with gendistill's samplers.

Same as ``gendistill generate``; run ``python pipelines/generate.py --help`` for the options.
"""

import sys

from gendistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
