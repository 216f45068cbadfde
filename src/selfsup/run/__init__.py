"""The record of one run: folder, lock, checkpoints, resume, preemption, divergence guard, metrics, report."""
