"""The NeRF jobs: ``gendistill fit-nerf`` (fit a field to images) and ``gendistill convert-nerf`` (PVD between
field architectures, NeRF <-> 3D Gaussians), each a recipe of :mod:`gendistill.convert` on the one trainer."""

from gendistill.jobs.convert.config import (TARGETS, ConvertConfig, FitNerfConfig, TrainerSection, load_convert_config,
                                            load_fit_config)
from gendistill.jobs.convert.convert_nerf import run_convert
from gendistill.jobs.convert.fit_nerf import NerfJobResult, fit_data, run_fit_nerf
from gendistill.jobs.convert.training import EnoughTraining, RecipeRun, train_recipe

__all__ = ["TARGETS", "ConvertConfig", "EnoughTraining", "FitNerfConfig", "NerfJobResult", "RecipeRun",
           "TrainerSection", "fit_data", "load_convert_config", "load_fit_config", "run_convert", "run_fit_nerf",
           "train_recipe"]
