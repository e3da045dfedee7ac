"""``gendistill demo``: the Gradio app (few-step generation beside the teacher, and text-to-3D)."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter
from gendistill.devices import pick_device
from gendistill.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="start the Gradio demo (few-step generation and text-to-3D)",
                       description="Start the Gradio demo: the chosen few-step model beside the teacher (NFE and "
                                   "seconds per image), and text-to-3D by score distillation with live renders. "
                                   "Models are the shipped ones (gendistill/assets) plus every --model.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 exposes the demo to your network")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--model", action="append", default=None, metavar="DIR",
                   help="a diffusers pipeline folder or shipped model to offer (repeatable), beside the shipped ones")
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="the teacher folder (default: the model without a distillation recipe in its "
                        "gendistill.json, e.g. shapes-teacher)")
    p.add_argument("--no-assets", action="store_true", help="do not offer the shipped models")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=run)


def check_gradio() -> None:
    """A UserError unless gradio 6 is installed (the demo uses its API)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("gradio")
    except PackageNotFoundError:
        raise UserError("the demo needs gradio: pip install 'gendistill[demo]'") from None
    if int(found.split(".")[0]) < 6:
        raise UserError(f"the demo needs gradio 6, found {found}: pip install 'gendistill[demo]'")


def run(args) -> int:
    check_gradio()
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in [1, 65535], got {args.port}")
    from gendistill.app.demo import ASSETS_DIR, DemoOptions, launch

    device = str(pick_device(args.device))
    options = DemoOptions(models=tuple(args.model or ()), teacher=args.teacher,
                          assets_dir=None if args.no_assets else ASSETS_DIR, host=args.host, port=args.port,
                          share=args.share, device=device)
    try:
        launch(options, block=True)
    except OSError as err:  # the port is taken, or the host is not an address of this machine
        raise UserError(f"cannot serve on {args.host}:{args.port}: {str(err).splitlines()[0]}") from None
    return 0
