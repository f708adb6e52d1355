"""Synthetic data, spec inference and fitting, and the training pipeline."""
