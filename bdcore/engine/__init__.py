"""Training engine: run config (config), encoder weights (weights), models and checkpoints (models), devices (device),
the run folder (rundir), the recipe/trainer/validation (recipe, trainer, validate, train) and run processes (runs)."""
