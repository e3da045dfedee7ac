"""Jobs: the drivers that read a config, run recipes on the trainer, write a run folder and print."""
