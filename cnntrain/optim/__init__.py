"""Optimizers and learning-rate schedules (each module registers itself)."""

from . import optimizers, schedules  # noqa: F401
