"""Training engine: run config, encoder weights, models and checkpoints, the trainer, run processes."""
