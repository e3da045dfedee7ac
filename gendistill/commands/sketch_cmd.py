"""``gendistill sketch``: a vector sketch of a prompt (DiffSketcher: Bezier strokes under augmented SDS)."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("sketch", help="draw a prompt as N Bezier strokes by augmented SDS (DiffSketcher)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("prompt", help="what to draw, e.g. 'a red cube'")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.errors import UserError

    raise UserError("sketch is not wired yet")
