"""The training loop and everything around it: config, optimizers, schedules, checkpoints, logging."""
