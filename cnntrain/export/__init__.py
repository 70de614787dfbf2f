"""Exporting a checkpoint to other runtimes (ONNX); nothing here imports onnx until a command asks for it."""
