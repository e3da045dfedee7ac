"""Does ``gendistill generate --sampler auto`` give the stock diffusers pipeline's latents? (issue 12)

Two parts, one run:

- ``matrix``: tiny random StableDiffusion / SDXL / SD3 pipelines (the test suite's), every scheduler class the
  pipelines accept x spacing (leading with steps_offset 1, trailing, linspace) x prediction (epsilon, v) x
  Karras sigmas (where offered), plus zero terminal SNR and guidance rescale 0.7 rows. Each row: max |latent
  difference| between ``generate(..., sampler="auto")`` and ``pipe(..., output_type="latent")``, same seed.
- ``shipped``: the shipped teacher and students, each on its own scheduler and with DPM-Solver++ 2M Karras and
  UniPC swapped in (``pipe.scheduler = X.from_config(pipe.scheduler.config)``), at their usual step counts.

Only the public API is used (``generate`` with the pipeline's scheduler swapped), so the same script measures
an older checkout (``PYTHONPATH=old/checkout python benchmarks/scheduler_parity.py --out before``): that is how
the before/after table of issue 12 was made.

    python benchmarks/scheduler_parity.py --out benchmarks/results/scheduler_parity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny pipelines

PROMPT, GUIDANCE, SEED = "a red cube", 5.0, 3
SPACINGS = {"leading": {"timestep_spacing": "leading", "steps_offset": 1},
            "trailing": {"timestep_spacing": "trailing", "steps_offset": 0},
            "linspace": {"timestep_spacing": "linspace", "steps_offset": 0}}


@dataclass(frozen=True)
class Case:
    """One row: a scheduler class with options on a tiny pipeline of ``family``."""

    scheduler: str
    options: dict = field(default_factory=dict)
    prediction: str = "epsilon"
    spacing: str = "leading"
    family: str = "sd"  # sd | sdxl | sd3
    steps: int = 5
    karras: bool = False
    rescale: float = 0.0
    zero_snr: bool = False
    label: str = ""

    @property
    def id(self) -> str:
        parts = [self.label or self.scheduler, self.family, self.prediction, self.spacing]
        parts += ["karras"] * self.karras + [f"rescale{self.rescale:g}"] * (self.rescale > 0) + ["zsnr"] * self.zero_snr
        return "-".join(parts)


VP_SCHEDULERS = {  # label -> (class, options, offers Karras)
    "DDIM": ("DDIMScheduler", {}, False),
    "DDIM-eta1": ("DDIMScheduler", {"_eta": 1.0}, False),
    "DDPM": ("DDPMScheduler", {}, False),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}, False),
    "PNDM-prk": ("PNDMScheduler", {"skip_prk_steps": False}, False),
    "Euler": ("EulerDiscreteScheduler", {}, True),
    "EulerAncestral": ("EulerAncestralDiscreteScheduler", {}, False),
    "Heun": ("HeunDiscreteScheduler", {}, True),
    "LMS": ("LMSDiscreteScheduler", {}, True),
    "DPM++2M": ("DPMSolverMultistepScheduler", {}, True),
    "DPM++2M-SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, True),
    "DPM++3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}, True),
    "DPM++2S": ("DPMSolverSinglestepScheduler", {}, True),
    "DPM++SDE": ("DPMSolverSDEScheduler", {"noise_sampler_seed": 0}, True),  # else its Brownian tree takes the
    # global RNG: not reproducible in diffusers either
    "UniPC": ("UniPCMultistepScheduler", {}, True),
    "DEIS": ("DEISMultistepScheduler", {}, True),
    "KDPM2": ("KDPM2DiscreteScheduler", {}, True),
    "KDPM2Ancestral": ("KDPM2AncestralDiscreteScheduler", {}, True),
    "LCM": ("LCMScheduler", {}, False),
    "TCD": ("TCDScheduler", {"_eta": 0.3}, False),
}


def matrix_cases() -> list[Case]:
    cases = []
    for label, (cls, options, karras) in VP_SCHEDULERS.items():
        for prediction in ("epsilon", "v_prediction"):
            for spacing in SPACINGS:
                cases.append(Case(cls, options, prediction, spacing, label=label))
                if karras:
                    cases.append(Case(cls, options, prediction, spacing, karras=True, label=label))
        cases.append(Case(cls, options, "v_prediction", "trailing", zero_snr=True, label=label))
    for prediction in ("epsilon", "v_prediction"):  # 6 steps do not divide 1000: DDIM steps to t - 1000 // 6
        for spacing in SPACINGS:
            cases.append(Case("DDIMScheduler", {}, prediction, spacing, steps=6, label="DDIM-6steps"))
    for label in ("DPM++2M", "UniPC", "Euler", "DDIM"):
        cls, options, karras = VP_SCHEDULERS[label]
        for prediction in ("epsilon", "v_prediction"):
            cases.append(Case(cls, options, prediction, "leading", rescale=0.7, karras=karras, label=label))
    for label in ("Euler", "DPM++2M", "EulerAncestral", "UniPC"):
        cls, options, karras = VP_SCHEDULERS[label]
        cases.append(Case(cls, options, "epsilon", "leading", family="sdxl", karras=karras, label=label))
    # (stochastic_sampling is left out: SD3's pipeline passes no generator to step, so stock draws that noise
    # from the global RNG and no seed reproduces it; gendistill passes the request's generator)
    for options in ({}, {"use_dynamic_shifting": True}, {"use_karras_sigmas": True}):
        name = "FlowMatchEuler" + "".join(f"-{k}" for k in options)
        cases.append(Case("FlowMatchEulerDiscreteScheduler", options, "flow", "-", family="sd3", label=name))
    cases.append(Case("FlowMatchHeunDiscreteScheduler", {}, "flow", "-", family="sd3", label="FlowMatchHeun"))
    return cases


def tiny_pipeline(case: Case):
    from tiny_pipelines import tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

    if case.family == "sd3":
        return tiny_sd3_pipeline(seed=1)
    if case.family == "sdxl":
        return tiny_sdxl_pipeline(seed=1)
    return tiny_sd_pipeline(seed=1, prediction_type=case.prediction)


def scheduler_for(case: Case, base_config, keep_spacing: bool = False):
    import diffusers

    options = {k: v for k, v in case.options.items() if not k.startswith("_")}
    if case.family != "sd3" and not keep_spacing:
        options.update(SPACINGS[case.spacing])
        options["prediction_type"] = base_config.get("prediction_type", "epsilon")
    if case.zero_snr:
        options["rescale_betas_zero_snr"] = True
    if case.karras:
        options["use_karras_sigmas"] = True
    return getattr(diffusers, case.scheduler).from_config(base_config, **options)


def measure(pipe, case: Case, steps: int | None = None, guidance: float = GUIDANCE, keep_spacing=False) -> dict:
    """Max |latent difference| of ``generate`` (auto, the pipeline's scheduler) against the stock pipeline."""
    from gendistill.backends.generation import GenerationRequest, generate
    from gendistill.backends.text_to_image import TextToImageModel

    steps = steps or case.steps
    eta = case.options.get("_eta", 0.0)
    pipe.scheduler = scheduler_for(case, pipe.scheduler.config, keep_spacing)
    call = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(SEED))
    if case.family != "sd3":
        call.update(eta=eta, guidance_rescale=case.rescale)
    start = time.perf_counter()
    try:
        expected = pipe(PROMPT, **call).images
    except Exception as err:  # the stock pipeline itself cannot run this combination
        return {"id": case.id, "stock_error": f"{type(err).__name__}: {err}"[:200]}
    request = GenerationRequest(PROMPT, steps=steps, guidance=guidance, guidance_rescale=case.rescale, seed=SEED,
                                eta=eta, karras=case.karras)
    try:
        got = generate(TextToImageModel(pipe), request, progress=False)
    except Exception as err:
        return {"id": case.id, "error": f"{type(err).__name__}: {err}"[:200]}
    diff = (got.latents.float() - expected.float()).abs().max().item()
    return {"id": case.id, "max_abs_diff": diff, "scale": expected.abs().max().item(),
            "sampler": getattr(got, "sampler", "") or "?", "seconds": time.perf_counter() - start}


def run_matrix(cases: list[Case]) -> list[dict]:
    rows = []
    pipes: dict = {}
    for case in cases:
        key = (case.family, case.prediction)
        if key not in pipes:
            pipes[key] = tiny_pipeline(case)
            pipes[key].original_scheduler = pipes[key].scheduler
        pipes[key].scheduler = pipes[key].original_scheduler  # each case from the pipeline's own config
        with torch.inference_mode():
            rows.append({**measure(pipes[key], case), "case": asdict(case)})
        print(f"{rows[-1]['id']}: {rows[-1].get('max_abs_diff', rows[-1].get('error', rows[-1].get('stock_error')))}",
              flush=True)
    return rows


SHIPPED = {  # model -> (steps, guidance)
    "shapes-teacher": (25, 5.0),
    "shapes-dmd2-1step": (1, 0.0),
    "shapes-lcm-4step": (4, 0.0),
    "shapes-progressive-4step": (4, 5.0),
    "shapes-dmd2-4step": (4, 0.0),
    "shapes-phased-dmd-4step": (4, 0.0),  # two expert UNets switching at the phase boundary (its pipeline.py)
}
EXTRA_SHIPPED = [("shapes-teacher", "DPMSolverMultistepScheduler", True, "DPM++2M Karras", 10, 5.0)]
"""The teacher has zero terminal SNR: Karras sigmas then start at sigma ~4000 and, at 25 steps, repeat the top
timestep, which diffusers' DPM-Solver cannot step (IndexError in stock too); at 10 steps they do not."""


def run_shipped() -> list[dict]:
    from gendistill.backends.loading import load_pipeline
    from gendistill.shipped import resolve_model_name

    runs = []
    for name, (steps, guidance) in SHIPPED.items():
        runs += [(name, None, False, "own", steps, guidance),
                 (name, "DPMSolverMultistepScheduler", True, "DPM++2M Karras", steps, guidance),
                 (name, "UniPCMultistepScheduler", False, "UniPC", steps, guidance)]
    runs += EXTRA_SHIPPED
    rows, pipes = [], {}
    for name, cls, karras, label, steps, guidance in runs:
        if name not in pipes:
            pipes[name] = load_pipeline(resolve_model_name(name))
            pipes[name].original_scheduler = pipes[name].scheduler
        pipe = pipes[name]
        pipe.scheduler = pipe.original_scheduler
        original = pipe.scheduler.config
        cls = cls or type(pipe.scheduler).__name__
        label = cls if label == "own" else label
        case = Case(cls, {}, original.get("prediction_type", "epsilon"), original["timestep_spacing"], karras=karras,
                    label=label)
        with torch.inference_mode():
            row = measure(pipe, case, steps, guidance, keep_spacing=True)
        rows.append({**row, "model": name, "scheduler": label, "steps": steps})
        print(f"{name} {label} {steps}: {row.get('max_abs_diff', row.get('error', row.get('stock_error')))}",
              flush=True)
    return rows


def markdown(matrix: list[dict], shipped: list[dict], tol: float) -> str:
    def cell(row):
        if "max_abs_diff" in row:
            return f"{row['max_abs_diff']:.2e}" + ("" if row["max_abs_diff"] <= tol else " **over**")
        return "stock cannot run" if "stock_error" in row else f"error: {row['error'][:60]}"

    lines = ["| model | scheduler | steps | max abs latent diff | sampled with |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['scheduler']} | {r['steps']} | {cell(r)} | {r.get('sampler', '')} |"
              for r in shipped]
    lines += ["", "| case | max abs latent diff | latent scale | sampled with |", "|---|---|---|---|"]
    lines += [f"| {r['id']} | {cell(r)} | {r.get('scale', 0):.3g} | {r.get('sampler', '')} |" for r in matrix]
    passed = sum(1 for r in matrix if r.get("max_abs_diff", 1e9) <= tol)
    runnable = sum(1 for r in matrix if "stock_error" not in r)
    lines.insert(0, f"Matrix: {passed} of {runnable} runnable cases within {tol:g} "
                    f"({len(matrix) - runnable} the stock pipeline cannot run).\n")
    return "\n".join(lines)


def compare(before: dict, after: dict, tol: float) -> str:
    """Rows over ``tol`` (or failing) before, with their numbers before and after."""
    def value(row):
        if "max_abs_diff" in row:
            return f"{row['max_abs_diff']:.3g}"
        return "stock cannot run" if "stock_error" in row else "error: " + row.get("error", "")[:50]

    lines = ["| case | before | after |", "|---|---|---|"]
    for part in ("shipped", "matrix"):
        now = {(r.get("model", ""), r["id"], r.get("steps")): r for r in after[part]}
        for row in before[part]:
            if row.get("max_abs_diff", float("inf")) <= tol or "stock_error" in row:
                continue
            key = (row.get("model", ""), row["id"], row.get("steps"))
            name = f"{row['model']} {row['scheduler']} {row['steps']} steps" if part == "shipped" else row["id"]
            lines.append(f"| {name} | {value(row)} | {value(now[key]) if key in now else 'not run'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scheduler_parity", help="output path without suffix")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--skip-shipped", action="store_true")
    parser.add_argument("--only", default=None, help="substring of the case ids to run")
    parser.add_argument("--compare", default=None, help="a JSON of an earlier run: also write OUT_before_after.md")
    args = parser.parse_args(argv)
    from gendistill.compat import prepare_process

    prepare_process()
    torch.set_num_threads(1)
    cases = [c for c in matrix_cases() if args.only is None or args.only in c.id]
    matrix = run_matrix(cases)
    shipped = [] if args.skip_shipped else run_shipped()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"tol": args.tol, "matrix": matrix, "shipped": shipped}, indent=1))
    out.with_suffix(".md").write_text(markdown(matrix, shipped, args.tol) + "\n")
    print(f"wrote {out}.json and {out}.md")
    if args.compare:
        table = compare(json.loads(Path(args.compare).read_text()), {"matrix": matrix, "shipped": shipped}, args.tol)
        Path(f"{out}_before_after.md").write_text(table + "\n")
        print(f"wrote {out}_before_after.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
