"""Hyperparameter search: the resumable Optuna sweeper and the best-hyperparameters file."""
