"""2D score distillation jobs: ``edit`` (LUSD, DDS, SDS), ``stylize`` (Attention Distillation), ``sketch``."""
