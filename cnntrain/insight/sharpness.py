"""train.track_sharpness: the top Hessian eigenvalue of the training loss every E epochs, as metrics.csv's `sharpness`."""

from __future__ import annotations

import math

from ..train import Callback
from .hessian import sharpness
from .objective import Objective, fixed_sample


class SharpnessTracker(Callback):
    """After every `every`-th epoch, logs[sharpness] = lambda_max of the Hessian of the data
    loss plus L2, by `iters` Lanczos steps, on `batch` training images drawn once with the run's seed;
    NaN after the other epochs.

    Measured as `cnntrain hessian RUN --split train --batch N` measures it (evaluation mode, float64,
    the same images and start vector), on a copy of the network: the weights and every random stream of
    training are untouched, so a run trains exactly as without tracking. Runs before the loggers (order
    -10) so the value is in the row they write; the time it takes is not in the epoch's `seconds`.
    """

    order = -10

    def __init__(self, settings, model, loss, penalty, train, preprocess, seed: int):
        self.every, self.iters, self.seed = settings.every, settings.iters, seed
        self.model, self.loss, self.penalty, self.preprocess = model, loss, penalty, preprocess
        x, y = train
        idx = fixed_sample(len(y), settings.batch, seed)
        self.x, self.y = x[idx], y[idx]

    def on_epoch_end(self, state, logs):
        logs["sharpness"] = math.nan
        if state.epoch % self.every == 0:
            objective = Objective(self.model, self.loss, self.preprocess(self.x), self.y, self.penalty)
            logs["sharpness"] = sharpness(objective, self.iters, self.seed)
