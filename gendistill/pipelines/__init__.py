"""Integrations of gendistill into other tools' entry points (the user-facing top layer).

- :mod:`gendistill.pipelines.nerfstudio_method`: the ``gendistill-sds`` method of ``ns-train`` (needs the
  ``nerf`` extra; registered under ``nerfstudio.method_configs`` in pyproject.toml).
"""
