"""``gendistill eval-3d DIR``: score a text-to-3D result against the analytic object of its shapes caption."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("eval-3d", help="measure a text-to-3d result (silhouette IoU, colour error, prompt accuracy)",
                       description="Render the scene of DIR (scene.ply of Gaussians, or a NeRF's field.safetensors) "
                                   "from 8 held-out cameras and compare with the analytic render of the shapes "
                                   "caption in DIR/config.yaml: silhouette IoU, colour error "
                                   "inside the silhouette and the classifier's prompt accuracy. Prints a table and "
                                   "writes DIR/eval3d.json.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("dir", help="the --out folder of a text-to-3d run")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.jobs.text_to_3d.evaluate3d import evaluate_run_dir, format_eval_table

    result = evaluate_run_dir(args.dir)
    print(format_eval_table(result))
    print(f"wrote {args.dir.rstrip('/')}/eval3d.json")
    return 0
