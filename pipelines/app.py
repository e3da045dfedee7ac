"""The gendistill Gradio demo: few-step generation beside the teacher, and text-to-3D.

Same as ``gendistill demo``; run ``python pipelines/app.py --help`` for the options
(``--host 127.0.0.1 --port 7860 --model DIR ... --teacher DIR --share``).
"""

import sys

from gendistill.commands.parsing import OneLineParser
from gendistill.compat import prepare_process
from gendistill.errors import UserError


class _Commands:
    """Stands in for argparse's subparsers so that ``demo_cmd.add_parser`` builds this script's own parser."""

    parser = None

    def add_parser(self, name, help=None, **kwargs):  # noqa: A002 - argparse's name
        self.parser = OneLineParser(prog="python pipelines/app.py", **kwargs)
        return self.parser


def main(argv: list[str]) -> int:
    prepare_process()  # as the gendistill command does, before torch and diffusers are imported
    from gendistill.commands import demo_cmd

    commands = _Commands()
    demo_cmd.add_parser(commands)
    try:
        args = commands.parser.parse_args(argv)
        return args.run(args) or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
