"""``gendistill train-clip``: train the shapes world's small CLIP (open_clip) on renders and captions."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("train-clip", help="train a small open_clip CLIP on shapes renders and captions",
                       description="Build an open_clip CLIP from a config (no downloaded weights) and train it "
                                   "contrastively on shapes-world renders and their captions, on the one trainer. "
                                   "Writes OUT/clip (open_clip's folder layout, tokenizer, model card with the "
                                   "zero-shot accuracy) and resumable OUT/checkpoints.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--config", default="shapes-clip", help="YAML config, or a shipped preset by name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set steps=200 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)
    from gendistill.config import load_config
    from gendistill.domains.shapes.clip_training import ClipTrainingConfig
    from gendistill.jobs.train_clip import train_clip
    from gendistill.shipped import resolve_preset

    config = load_config(ClipTrainingConfig, resolve_preset(args.config, ""), args.overrides)
    result = train_clip(config, args.out, resume=args.resume)
    print(f"clip exported to {result.clip_dir}")
    return 0
