"""cnntrain: train and understand convolutional networks written in plain NumPy."""

__version__ = "0.1.0"
