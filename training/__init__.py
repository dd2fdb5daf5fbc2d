"""Training stage: datasets, models, the training loop, checkpoints and evaluation."""
