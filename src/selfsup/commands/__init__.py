"""What a user does with a finished run: evaluate (kNN, linear, fine-tune, transfer), embed, export, compare."""
