"""``gendistill distill``: the job that binds a recipe to a teacher, trains it on the one trainer, exports the
student as a diffusers folder with its model card, and measures it against the teacher."""
