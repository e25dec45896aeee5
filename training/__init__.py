"""Iris classifier training pipeline: data → MLflow runs → registry → BentoML model store."""

__version__ = "0.1.0"
