"""The ``gendistill`` command line. User errors end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from gendistill.commands.parsing import OneLineParser
from gendistill.errors import RunStopped, UserError


def build_parser() -> argparse.ArgumentParser:
    from gendistill.commands import (
        convert_nerf_cmd, demo_cmd, distill_cmd, edit3d_cmd, edit_cmd, eval3d_cmd, eval_cmd, fit_nerf_cmd,
        generate_cmd, image_to_3d_cmd, sketch_cmd, stylize_cmd, text_to_3d_cmd, train_clip_cmd,
        train_image_teacher_cmd, train_teacher_cmd,
    )

    parser = OneLineParser(prog="gendistill", description="Distil diffusion models into few-step generators "
                                                          "(DMD2, LCM, progressive) and into 3D assets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for module in (generate_cmd, eval_cmd, distill_cmd, train_teacher_cmd, text_to_3d_cmd, eval3d_cmd, fit_nerf_cmd,
                   convert_nerf_cmd, edit_cmd, edit3d_cmd, sketch_cmd, stylize_cmd, demo_cmd, train_clip_cmd,
                   train_image_teacher_cmd, image_to_3d_cmd):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``gendistill`` command; the exit code (0 ok, 1 stopped, 2 user error, 130 interrupted)."""
    from gendistill.compat import prepare_process

    prepare_process()  # before the commands import torch and diffusers
    try:
        args = build_parser().parse_args(argv)
        return args.run(args) or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
