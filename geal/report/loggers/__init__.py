"""Run loggers: one small interface (config, metric streams, final values) for csv, wandb, tensorboard."""
