"""The training loop alone: a run's setup, the trainer, the step and the optimizers (LARS)."""
