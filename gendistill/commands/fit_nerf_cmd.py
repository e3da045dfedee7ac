"""``gendistill fit-nerf``: fit a radiance field to multi-view images (shapes renders or transforms.json)."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("fit-nerf", help="fit a radiance field (mlp, TensoRF VM/CP, hash grid) to multi-view images",
                       description="Fit a radiance field built from nerfstudio's field components to images with "
                                   "known cameras: the shapes world's renders of a caption (--prompt), or a folder "
                                   "in the nerfstudio/instant-ngp transforms.json layout (--data). Writes "
                                   "DIR/field.safetensors, metrics.json (PSNR on held-out views), renders.png, "
                                   "curves.png, config.yaml and checkpoints/ (--resume continues; Ctrl-C keeps the "
                                   "outputs of the last step). Needs the nerf extra: pip install 'gendistill[nerf]'.",
                       formatter_class=DefaultsFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="a shapes caption, e.g. 'a red cube'")
    source.add_argument("--data", default=None, help="a folder with transforms.json and its images")
    p.add_argument("--architecture", default=None, help="mlp, tensorf-vm, tensorf-cp or hashgrid; default: hashgrid")
    p.add_argument("--steps", type=int, default=None, help="training steps; default: the config's (1500)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set fit.rays_per_step=512 or --set field.bound=2 "
                        "(repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: 0")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.jobs.convert import load_fit_config, run_fit_nerf

    overrides = list(args.overrides)
    for key, value in (("field.architecture", args.architecture), ("fit.steps", args.steps), ("seed", args.seed)):
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    config = load_fit_config(overrides)
    metrics = run_fit_nerf(config, args.out, prompt=args.prompt, data_dir=args.data, resume=args.resume,
                           log=print).metrics
    print(f"{metrics['architecture']}: held-out PSNR {metrics['psnr_holdout']:.2f} dB after {metrics['steps']} steps "
          f"({metrics['seconds']:.0f} s); wrote {args.out.rstrip('/')}/field.safetensors")
    return 0
