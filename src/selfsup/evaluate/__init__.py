"""Evaluation on tensors: kNN, linear probe, collapse monitors, plots."""
