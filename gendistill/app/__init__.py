"""The ``gendistill demo`` Gradio app: few-step generation beside the teacher, and text-to-3D.

Gradio is an optional dependency (``pip install 'gendistill[demo]'``); nothing here imports it until the app is
built. Entry points: :func:`gendistill.app.demo.launch` and ``gendistill demo``.
"""
