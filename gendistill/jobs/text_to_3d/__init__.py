"""``gendistill text-to-3d`` and ``gendistill eval-3d``: the job that optimises a scene under a text-to-image
model's score (``run.run_text_to_3d``), writes its run folder (``outputs``) and evaluates it (``evaluate3d``)."""
