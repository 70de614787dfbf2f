"""A checkpoint as an ONNX graph: [0, 1] pixels -> stored preprocessing -> every layer -> logits, probabilities.

One function per layer class in LAYER_EXPORTERS (and per loss in LOSS_EXPORTERS) writes that layer's
nodes, so exporting a new layer means adding one function. Imports onnx: only `cnntrain export` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..errors import ConfigError
from ..inspection import load_model
from ..layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from ..layers.conv import Conv2D
from ..layers.dense import Dense
from ..layers.dropout import Dropout
from ..layers.norm import BatchNorm
from ..layers.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D, SpatialPyramidPooling, adaptive_bins
from ..layers.reshape import Flatten
from ..losses import BinaryCrossEntropy, L1, MSE, SoftmaxCrossEntropy
from ..runs import atomic_write_bytes, find_checkpoint

DEFAULT_OPSET = 17  # runs in every onnxruntime the extra allows (tested: 1.19 and 1.32)
MIN_OPSET = 13  # Softmax over one axis (cnntrain's softmax layer)
INPUT, LOGITS, PROBABILITIES = "images", "logits", "probabilities"


class Graph:
    """The nodes and initializers of an ONNX graph being built; every tensor gets a unique name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = {INPUT}

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def const(self, name: str, array) -> str:
        """A float32 initializer (int64 for integer arrays, as Slice wants)."""
        array = np.asarray(array)
        array = array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32)
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, doc: str | None = None, **attrs) -> str:
        """Append one node; returns its (single) output's name, which is the node's name."""
        name = self._unique(name)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, doc_string=doc, **attrs))
        return name

    def rename_output(self, tensor: str, new: str) -> str:
        """Make the graph's last tensor `new` (an output name); an Identity when it is the graph input."""
        if self.nodes and self.nodes[-1].output[0] == tensor:
            self.nodes[-1].output[0] = new
            self._names.add(new)
            return new
        self.nodes.append(helper.make_node("Identity", [tensor], [new], name=new))
        return new


LAYER_EXPORTERS = {}  # layer class -> fn(graph, layer, x, name) -> output tensor name
LOSS_EXPORTERS = {}  # loss class -> fn(graph, logits, K) -> (probabilities tensor name, its width)


def exports(*classes):
    """Register the function writing the nodes of these layer classes (exact classes, not subclasses)."""
    def register(fn):
        for cls in classes:
            LAYER_EXPORTERS[cls] = fn
        return fn
    return register


def onnx_pads(pads) -> list[int]:
    """cnntrain's ((top, bottom), (left, right)) as ONNX's [top, left, bottom, right]."""
    (t, b), (l, r) = pads
    return [t, l, b, r]


@exports(Conv2D)
def _conv2d(g, layer, x, name):
    inputs = [x, g.const(f"{name}.W", layer.params["W"])]  # (F, C, KH, KW): ONNX's layout already
    if layer.use_bias:
        inputs.append(g.const(f"{name}.b", layer.params["b"]))
    return g.node("Conv", inputs, name, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  dilations=list(layer.dilation), pads=onnx_pads(layer.pads))


@exports(MaxPool2D)
def _maxpool2d(g, layer, x, name):
    # ONNX max pooling never takes a padded position as the maximum: cnntrain's -inf padding
    return g.node("MaxPool", [x], name, kernel_shape=list(layer.size), strides=list(layer.stride),
                  pads=onnx_pads(layer.pads))


@exports(AvgPool2D)
def _avgpool2d(g, layer, x, name):
    return g.node("AveragePool", [x], name, kernel_shape=list(layer.size), strides=list(layer.stride),
                  pads=onnx_pads(layer.pads), count_include_pad=0)


@exports(GlobalAvgPool2D)
def _global_avgpool(g, layer, x, name):
    pooled = g.node("GlobalAveragePool", [x], f"{name}.pool")  # (N, C, 1, 1)
    return g.node("Flatten", [pooled], name, axis=1)


@exports(SpatialPyramidPooling)
def _spp(g, layer, x, name):
    # Each bin is a slice of the (built) input pooled to (N, C, 1, 1); a level's n*n bins are
    # concatenated on axis 2 and flattened, so its columns are channel-major (c, i, j) as in cnntrain.
    _, H, W = layer.in_shape
    pool = {"max": "GlobalMaxPool", "avg": "GlobalAveragePool"}[layer.mode]
    axes = g.const(f"{name}.axes", [2, 3])
    levels = []
    for n in layer.levels:
        bins = []
        for i, (r0, r1) in enumerate(adaptive_bins(H, n)):
            for j, (c0, c1) in enumerate(adaptive_bins(W, n)):
                region = g.node("Slice", [x, g.const(f"{name}.{n}.{i}.{j}.starts", [r0, c0]),
                                          g.const(f"{name}.{n}.{i}.{j}.ends", [r1, c1]), axes],
                                f"{name}.{n}.{i}.{j}.slice")
                bins.append(g.node(pool, [region], f"{name}.{n}.{i}.{j}"))
        stacked = g.node("Concat", bins, f"{name}.{n}.bins", axis=2) if len(bins) > 1 else bins[0]
        levels.append(g.node("Flatten", [stacked], f"{name}.{n}", axis=1))
    return g.node("Concat", levels, name, axis=1) if len(levels) > 1 else levels[0]


@exports(Flatten)
def _flatten(g, layer, x, name):
    return g.node("Flatten", [x], name, axis=1)  # row-major over the NCHW shape: cnntrain's channel-major order


@exports(Dense)
def _dense(g, layer, x, name):
    inputs = [x, g.const(f"{name}.W", layer.params["W"])]  # (D, units): y = x @ W + b
    if layer.use_bias:
        inputs.append(g.const(f"{name}.b", layer.params["b"]))
    return g.node("Gemm", inputs, name)


@exports(BatchNorm)
def _batchnorm(g, layer, x, name):
    p, b = layer.params, layer.buffers
    inputs = [x] + [g.const(f"{name}.{k}", v) for k, v in
                    (("gamma", p["gamma"]), ("beta", p["beta"]), ("running_mean", b["running_mean"]),
                     ("running_var", b["running_var"]))]
    return g.node("BatchNormalization", inputs, name, epsilon=layer.eps)  # inference form: running statistics


@exports(Dropout)
def _dropout(g, layer, x, name):
    return x  # identity at evaluation


def _unary(op):
    return lambda g, layer, x, name: g.node(op, [x], name)


LAYER_EXPORTERS.update({ReLU: _unary("Relu"), Sigmoid: _unary("Sigmoid"), Tanh: _unary("Tanh")})


@exports(LeakyReLU)
def _leaky_relu(g, layer, x, name):
    return g.node("LeakyRelu", [x], name, alpha=layer.alpha)


@exports(Softmax)
def _softmax(g, layer, x, name):
    return g.node("Softmax", [x], name, axis=-1)  # cnntrain's softmax layer normalises the last axis


def _softmax_probabilities(g, logits, K):
    return g.node("Softmax", [logits], PROBABILITIES, axis=1), K


def _binary_probabilities(g, logits, K):
    p1 = g.node("Sigmoid", [logits], "p1")  # (N, 1): probability of class 1
    p0 = g.node("Sub", [g.const("one", np.ones((1, 1))), p1], "p0")
    return g.node("Concat", [p0, p1], PROBABILITIES, axis=1), 2


def _identity_probabilities(g, logits, K):
    return g.node("Identity", [logits], PROBABILITIES), K  # regression losses: the outputs themselves


LOSS_EXPORTERS.update({SoftmaxCrossEntropy: _softmax_probabilities, BinaryCrossEntropy: _binary_probabilities,
                      MSE: _identity_probabilities, L1: _identity_probabilities})


def _preprocess(g, preprocess, x):
    """cnntrain's u8 * scale + offset on [0, 1] pixels: x * (255 * scale) + offset, per channel."""
    doc = "; ".join(preprocess.describe()) or "pixels scaled to [0, 1]"
    C = len(preprocess.scale64)
    scaled = g.node("Mul", [x, g.const("preprocess.scale", (255.0 * preprocess.scale64).reshape(1, C, 1, 1))],
                    "preprocess.scaled", doc=doc)
    return g.node("Add", [scaled, g.const("preprocess.offset", preprocess.offset64.reshape(1, C, 1, 1))],
                  "preprocess", doc=doc)


def check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset: must be between {MIN_OPSET} and {newest} (this onnx {onnx.__version__}), "
                          f"got {opset}")


def build_onnx(model, preprocess, loss, classes: list[str], opset: int = DEFAULT_OPSET,
               metadata: dict | None = None) -> onnx.ModelProto:
    """The ONNX model of a built Sequential in evaluation; ConfigError naming a layer (or loss) it cannot write."""
    check_opset(opset)
    for i, layer in enumerate(model.layers):
        if type(layer) not in LAYER_EXPORTERS:
            raise ConfigError(f"layer {i} ({getattr(layer, 'registry_name', type(layer).__name__)}) "
                              f"cannot be exported to ONNX")
    if type(loss) not in LOSS_EXPORTERS:
        raise ConfigError(f"loss {getattr(loss, 'registry_name', type(loss).__name__)}: "
                          "no ONNX form of its probabilities")
    g = Graph()
    x = _preprocess(g, preprocess, INPUT)
    for i, layer in enumerate(model.layers):
        x = LAYER_EXPORTERS[type(layer)](g, layer, x, f"layers.{i}.{layer.registry_name}")
    logits = g.rename_output(x, LOGITS)
    C, H, W = model.in_shape
    (K,) = model.out_shape
    probs, P = LOSS_EXPORTERS[type(loss)](g, logits, K)
    graph = helper.make_graph(
        g.nodes, "cnntrain", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", C, H, W])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", K]),
         helper.make_tensor_value_info(probs, TensorProto.FLOAT, ["N", P])],
        g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    # The oldest IR version that can hold this opset: any onnxruntime that runs the opset loads the file.
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cnntrain", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    proto.doc_string = (f"images: float32 (N, {C}, {H}, {W}), pixels scaled to [0, 1]; the graph applies the "
                        f"checkpoint's preprocessing. Outputs logits (N, {K}) and probabilities (N, {P}).")
    props = {"classes": json.dumps(list(classes)), "cnntrain_version": __version__, "input": proto.doc_string,
             **(metadata or {})}
    helper.set_model_props(proto, {k: str(v) for k, v in props.items() if v is not None})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(path, out=None, opset: int = DEFAULT_OPSET) -> dict:
    """Write a checkpoint (or a run directory's best.npz) as ONNX; default beside it, <checkpoint>.onnx."""
    check_opset(opset)
    checkpoint = find_checkpoint(path)
    exp, meta, model = load_model(checkpoint)
    preprocess = exp.stored_preprocess(meta, model.in_shape[0])
    metadata = {"name": exp.cfg.name, "loss": exp.loss.registry_name, "epoch": meta.get("epoch"),
                "preprocess": json.dumps(preprocess.state())}
    proto = build_onnx(model, preprocess, exp.loss, meta["classes"], opset, metadata)
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    atomic_write_bytes(out, proto.SerializeToString())
    return {"path": out, "checkpoint": checkpoint, "opset": opset, "ir_version": proto.ir_version,
            "nodes": len(proto.graph.node), "input_shape": list(model.in_shape), "classes": list(meta["classes"]),
            "outputs": {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in proto.graph.output},
            "bytes": out.stat().st_size}
