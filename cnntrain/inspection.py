"""What the commands that train nothing compute: summary, schedule, preview, eval."""

from __future__ import annotations

import numpy as np
import yaml

from .build import Experiment, build_setup, experiment_from_text
from .data.splits import describe_dataset, load_splits
from .errors import ConfigError, RunError
from .metrics import confusion_matrix, per_class_accuracy
from .model import Sequential
from .runs import find_checkpoint, json_number, load_checkpoint, split_state
from .train import evaluate


def summarize(exp: Experiment) -> dict:
    """Per-layer output shape, parameters and multiply-adds, built from the config alone (no data)."""
    cfg = exp.cfg
    in_shape, classes = describe_dataset(cfg)
    n_classes = len(cfg.data.classes) if cfg.data.classes else len(classes)
    model = exp.network(in_shape, n_classes)
    rows = model.summary_rows()
    return {"name": cfg.name, "input_shape": list(in_shape), "layers": rows,
            "totals": {"params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows),
                       "output_shape": list(model.out_shape)}}


def schedule_table(exp: Experiment, log=None) -> dict:
    """The lr (and momentum) of every step of the experiment's training, computed without training."""
    cfg = exp.cfg
    setup = build_setup(exp, load_splits(cfg, log=log))
    spe = len(setup.loader)
    steps = np.arange(spe * cfg.train.epochs)
    table = {"step": steps + 1, "epoch": steps // spe + 1, "lr": np.array([setup.schedule(int(s)) for s in steps])}
    if setup.momentum is not None:
        table["momentum"] = np.array([setup.momentum(int(s)) for s in steps])
    return {"name": cfg.name, "steps_per_epoch": spe, "batch_size": setup.loader.batch_size, "table": table}


def preview_batch(exp: Experiment, count: int = 16, epoch: int = 0, log=None) -> dict:
    """The first `count` images of an epoch's first training batch, as stored and as augmented for
    training (the very pixels fit() gets), with the preprocessed batch's statistics."""
    cfg = exp.cfg
    setup = build_setup(exp, load_splits(cfg, log=log))
    loader = setup.loader
    first = loader.batch_indices(epoch)[0]
    augmented, labels = next(loader.epoch(epoch))
    count = min(count, len(labels))
    x = loader.preprocess(augmented)
    return {"name": cfg.name, "raw": loader.x[first[:count]], "augmented": augmented[:count], "labels": labels[:count],
            "classes": setup.splits.classes, "preprocess": loader.preprocess.describe(), "batch_size": len(labels),
            "augment": [entry if isinstance(entry, str) else yaml.safe_dump(entry, default_flow_style=True).strip()
                        for entry in cfg.data.augment],
            "input_stats": {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
                            "std": float(x.std())}}


def load_model(checkpoint) -> tuple[Experiment, dict, Sequential]:
    """(experiment, meta, model with the checkpoint's weights) from a checkpoint file."""
    config_text, meta, arrays = load_checkpoint(checkpoint)
    try:
        exp = experiment_from_text(config_text, f"{checkpoint} (embedded config)")
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    model = exp.network(tuple(meta["input_shape"]), len(meta["classes"]))
    try:
        model.load_state_dict(split_state(arrays)[0], str(checkpoint))
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return exp, meta, model


def evaluate_checkpoint(path, split: str = "test", batch_size: int | None = None, log=None) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint on one split."""
    checkpoint = find_checkpoint(path)
    exp, meta, model = load_model(checkpoint)
    splits = load_splits(exp.cfg, log=log)
    x, y = getattr(splits, split)
    preprocess = exp.stored_preprocess(meta, splits.input_shape[0])
    mean_loss, acc, pred = evaluate(model, exp.loss, x, y, preprocess, batch_size or exp.cfg.train.eval_batch_size)
    classes = meta["classes"]
    cm = confusion_matrix(y, pred, len(classes))
    return {"checkpoint": str(checkpoint), "split": split, "n": int(len(y)), "loss": json_number(mean_loss),
            "accuracy": json_number(acc), "classes": classes,
            "per_class_accuracy": {c: json_number(float(a)) for c, a in zip(classes, per_class_accuracy(cm))},
            "confusion_matrix": cm.tolist(), "epoch": meta["epoch"]}
