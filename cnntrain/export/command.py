"""`cnntrain export`: the click command (onnx is imported only when it runs, so `cnntrain --help` stays fast)."""

from __future__ import annotations

import click

from ..errors import ConfigError


@click.command()
@click.argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="The file format.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE.onnx",
              help="Where to write (default: beside the checkpoint, e.g. RUN_DIR/checkpoints/best.onnx).")
@click.option("--opset", type=int, default=None, metavar="N", help="ONNX opset version  [default: 17]")
def export(checkpoint, fmt, out, opset):
    """Write a checkpoint (a run directory means its best.npz) as an ONNX model for other runtimes.

    The graph takes float32 images (N, C, H, W) with pixels scaled to [0, 1], applies the
    checkpoint's fitted preprocessing itself, and outputs `logits` and `probabilities`;
    the class names are in its metadata (`classes`, JSON). Needs: pip install 'cnntrain[onnx]'.
    """
    try:
        from .onnx_export import DEFAULT_OPSET, export_onnx
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "onnx":
            raise
        raise ConfigError("the ONNX export needs: pip install 'cnntrain[onnx]'") from None
    info = export_onnx(checkpoint, out, DEFAULT_OPSET if opset is None else opset)
    C, H, W = info["input_shape"]
    outputs = " and ".join(f"'{name}' (N, {width})" for name, width in info["outputs"].items())
    click.echo(f"input 'images' (N, {C}, {H}, {W}) float32 in [0, 1]; outputs {outputs}; "
               f"{len(info['classes'])} classes in the metadata")
    click.echo(f"onnx: {info['path']} (opset {info['opset']}, IR version {info['ir_version']}, "
               f"{info['nodes']} nodes, {info['bytes']:,} bytes)")
