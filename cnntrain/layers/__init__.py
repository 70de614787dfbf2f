"""Every layer module, imported so that each registers itself in LAYERS."""

from . import activations, conv, dense, dropout, norm, pool, reshape  # noqa: F401
from .base import Layer

__all__ = ["Layer"]
