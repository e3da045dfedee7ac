"""``gendistill.cli.main`` with the text-to-3d and eval-3d commands registered (until cli.py registers them)."""

import argparse

from gendistill import cli
from gendistill.commands import eval3d_cmd, text_to_3d_cmd


_build_parser = cli.build_parser


def build_parser() -> argparse.ArgumentParser:
    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, module in (("text-to-3d", text_to_3d_cmd), ("eval-3d", eval3d_cmd)):
        if name not in sub.choices:
            module.add_parser(sub)
    return parser


def cli_main(argv: list[str]) -> int:
    """``gendistill.cli.main(argv)`` with both commands available."""
    cli.build_parser = build_parser
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = _build_parser
