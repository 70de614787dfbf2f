"""The click commands of the insight package (no NumPy at import, so `cnntrain --help` stays fast)."""

from __future__ import annotations

import json

import click


def _json_ready(value):
    """Arrays as lists and NaN or infinities as null, so the printed object is standard JSON."""
    from ..runs import json_number

    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        value = value.tolist() if hasattr(value, "tolist") else value
        return [_json_ready(v) for v in value] if isinstance(value, list) else _json_ready(value)
    return json_number(value) if isinstance(value, float) else value


@click.command()
@click.argument("target", metavar="RUN_DIR|CHECKPOINT")
@click.option("--split", default="train", show_default=True, help="Where the batch comes from: train, val or test.")
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Images in the fixed batch (the whole split if it has fewer).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Largest eigenvalues.")
@click.option("--bottom-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Smallest (most negative) eigenvalues.")
@click.option("--iters", type=click.IntRange(min=2), default=100, show_default=True,
              help="Lanczos steps at most; it stops once the wanted eigenvalues have converged.")
@click.option("--density", is_flag=True, help="Also the eigenvalue density (stochastic Lanczos quadrature), plotted.")
@click.option("--seed", type=int, help="Seeds the batch and the random vectors (default: the run's seed, so the batch "
                                      "is the one train.track_sharpness measures on).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Density figure (implies --density; default: hessian_<split>_<checkpoint>.png in the run directory).")
def hessian(target, split, batch, top_k, bottom_k, iters, density, seed, as_json, out):
    """The spectrum of the Hessian of the loss (data loss plus the config's L2 term) at a checkpoint's weights.

    On a fixed, seeded batch, in evaluation mode (dropout off, batchnorm running statistics);
    Hessian-vector products are central differences of the network's own gradient in float64.
    Prints the gradient norm, the top and bottom eigenvalues (Lanczos with full
    reorthogonalization), the trace (Hutchinson), the share of negative spectral mass, a verdict
    (minimum, saddle or undetermined) and lambda_max * lr against 2, the stability limit of
    gradient descent. A run directory means its checkpoints/best.npz.
    """
    from pathlib import Path

    from .hessian import hessian_spectrum

    r = hessian_spectrum(target, split, batch, top_k, bottom_k, density or out is not None, seed, iters,
                         log=lambda line: click.echo(line, err=True))
    if r["density"] is not None:
        from .plots import plot_spectrum

        ckpt = Path(r["checkpoint"])
        folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        r["figure"] = str(plot_spectrum(r, out or folder / f"hessian_{split}_{ckpt.stem}.png"))
    if as_json:
        click.echo(json.dumps(_json_ready(r)))
        return
    for line in _hessian_lines(r):
        click.echo(line)


def _hessian_lines(r: dict) -> list[str]:
    top, bottom, tol = r["top"], r["bottom"], r["tolerance"]
    s = r["seconds"]
    lines = [f"{r['checkpoint']} (epoch {r['epoch']}): Hessian of the data loss{' + L2' if r['l2'] else ''} on "
             f"{r['images']:,} {r['split']} images (seed {r['seed']}), {r['params']:,} parameters, evaluation mode",
             f"loss {r['loss']:.4g}, gradient norm {r['grad_norm']:.3g}",
             f"top {len(top)} eigenvalues: {', '.join(f'{v:.4g}' for v in top)}  (Lanczos, {r['lanczos_steps']} steps; "
             f"residuals <= {max(r['top_residuals']):.1g})",
             f"bottom eigenvalue{'s' if len(bottom) > 1 else ''}: {', '.join(f'{v:.4g}' for v in bottom)}  "
             f"(residual{'s' if len(bottom) > 1 else ''} <= {max(r['bottom_residuals']):.1g})",
             f"trace: {r['trace']:.4g} +- {r['trace_stderr']:.2g}  (Hutchinson, {r['trace_probes']} Rademacher probes)",
             f"negative spectral mass: {100 * r['negative_mass']:.2f}% of sum |lambda|  "
             f"(quadrature over {r['quadrature_probes']} Lanczos run{'s' if r['quadrature_probes'] > 1 else ''})"]
    rule = f"tolerance {r['tolerance_rel']:g} x lambda_max = {tol:.2g}"
    lines.append({"saddle": f"verdict: saddle: negative curvature, lambda_min {bottom[0]:.4g} < -{tol:.2g} ({rule})",
                  "minimum": f"verdict: minimum: no negative curvature beyond -{tol:.2g} ({rule})",
                  "undetermined": f"verdict: undetermined: lambda_min {bottom[0]:.4g} is not resolved against the "
                                  f"{rule} (residual {r['bottom_residuals'][0]:.2g})"}[r["verdict"]])
    x = r["lambda_max_lr"]
    reading = ("below 2: gradient descent at this lr is stable along the sharpest direction" if x < 2 else
               "not below 2: gradient descent at this lr would oscillate and grow along the sharpest direction")
    note = "" if r["optimizer"] == "sgd" else f" ({r['optimizer']} is not plain gradient descent: the limit is indicative)"
    lines.append(f"stability: lambda_max * lr = {top[0]:.4g} x {r['lr']:.3g} = {x:.3g}, {reading}{note}")
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in s.items() if k not in ("total", "setup"))
    lines.append(f"{r['hvps']} Hessian-vector products in {s['total']:.1f} s ({parts}; data and setup {s['setup']:.1f} s)")
    if r.get("figure"):
        lines.append(f"figure: {r['figure']}")
    return lines


@click.command("lr-find")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config key.")
@click.option("--start", type=click.FloatRange(min=0, min_open=True), default=1e-7, show_default=True,
              help="Learning rate of the first step.")
@click.option("--end", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Learning rate of the last step.")
@click.option("--steps", type=click.IntRange(min=2), default=100, show_default=True,
              help="Mini-batches (optimizer steps), the lr growing exponentially from --start to --end.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: lrs, losses, smoothed, suggestions.")
@click.option("--out", type=click.Path(dir_okay=False), help="Figure path (default: <name>-lr-find.png).")
def lr_find(config, overrides, start, end, steps, as_json, out):
    """The learning-rate range test: train CONFIG's network from its initialisation while the lr grows
    exponentially, and suggest an lr from the smoothed loss curve.

    Stops when the smoothed loss exceeds 4 times its best or is not finite. Suggests the valley
    (middle of the longest descent), the steepest descent against log lr, and the minimum's lr / 10,
    and warns when they are more than 10x apart. Writes only the figure: no run, the config unchanged.
    """
    from ..build import load_experiment
    from .plots import plot_lr_find
    from .lr_find import disagreement_warning
    from .lr_find import lr_find as range_test

    if end <= start:
        raise click.BadParameter(f"must be larger than --start ({start:g}), got {end:g}", param_hint="--end")
    exp = load_experiment(config, overrides)
    r = range_test(exp, start, end, steps, log=lambda line: click.echo(line, err=True))
    out = out or f"{exp.cfg.name}-lr-find.png"
    r["figure"] = str(plot_lr_find(r, out))
    warning = disagreement_warning(r["suggestions"])
    if warning:
        click.echo(warning, err=True)
    if as_json:
        click.echo(json.dumps(_json_ready(r)))
    else:
        _print_lr_find(r)
    if r["suggestions"] is None:
        from ..errors import RunError

        raise RunError(f"only {len(r['lrs'])} steps before {r['stopped_early']} (at lr {r['lrs'][-1]:.3g}): too few "
                       "for a suggestion; lower --start or raise --steps")


def _print_lr_find(r: dict) -> None:
    click.echo(f"{r['name']}: lr range test, {r['optimizer']}, batch {r['batch_size']}, lr {r['start']:g} -> "
               f"{r['end']:g} over {r['steps']} steps ({r['seconds']:.1f} s)")
    if r["stopped_early"]:
        click.echo(f"stopped at step {r['stopped_at']['step']} (lr {r['stopped_at']['lr']:.3g}): {r['stopped_early']}")
    for name, lr in (r["suggestions"] or {}).items():
        click.echo(f"  {name:<9} {lr:<9.3g} ({lr / r['config_lr']:.2g}x the config's lr)")
    click.echo(f"config lr: {r['config_lr']:g}")
    click.echo(f"figure: {r['figure']}")


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path())
@click.option("--mode", type=click.Choice(["line", "1d", "2d"]), default="2d", show_default=True,
              help="line: init -> final weights; 1d / 2d: one or two filter-normalised random directions.")
@click.option("--points", type=click.IntRange(min=3),
              help="Points along each axis (default: 21 for line and 1d, 15 for 2d).")
@click.option("--range", "span", type=click.FloatRange(min=0, min_open=True),
              help="line: alpha from -R to 1 + R (default 0.5); 1d, 2d: from -R to R (default 1).")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="The first N training images (after the validation split) the loss is measured on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the random directions.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the grid, losses and accuracies.")
@click.option("--out", type=click.Path(dir_okay=False), help="Figure path (default: RUN_DIR/landscape_<mode>.png).")
def landscape(run_dir, mode, points, span, limit, seed, as_json, out):
    """The loss around a trained run: along the line from its initial weights (checkpoints/init.npz)
    to its final ones (checkpoints/last.npz), or along random directions normalised filter by
    filter (Li et al., 2018), as a curve or a contour plot.

    Measured in evaluation mode (dropout off, batchnorm running statistics) on a fixed subset of
    the training images.
    """
    from pathlib import Path

    from .plots import plot_landscape
    from .landscape import landscape as measure

    r = measure(run_dir, mode, points, span, limit, seed, log=lambda line: click.echo(line, err=True))
    r["figure"] = str(plot_landscape(r, out or Path(run_dir) / f"landscape_{mode}.png"))
    if as_json:
        click.echo(json.dumps(_json_ready(r)))
        return
    for line in _landscape_lines(r):
        click.echo(line)


def _landscape_lines(r: dict) -> list[str]:
    lines = [f"{r['name']}: {r['mode']} landscape of {r['checkpoint']} on {r['images']} training images, "
             f"{r['evaluations']} evaluations in {r['seconds']:.1f} s"]
    if r["mode"] == "line":
        i, f, rise = r["init"], r["final"], r["largest_rise"]
        lines.append(f"init loss {i['loss']:.4g} (accuracy {100 * i['accuracy']:.1f}%) -> final loss {f['loss']:.4g} "
                     f"(accuracy {100 * f['accuracy']:.1f}%)")
        lines.append("from init to final the loss falls monotonically" if r["monotone"] else
                     f"from init to final the loss is not monotone: it climbs {rise['by']:.3g} above its lowest "
                     f"value so far at alpha {rise['alpha']:.2f}")
    else:
        t = r["trained"]
        lines.append(f"trained loss {t['loss']:.4g} (accuracy {100 * t['accuracy']:.1f}%); over alpha"
                     f"{', beta' if r['mode'] == '2d' else ''} in [-{r['span']:g}, {r['span']:g}]: "
                     f"loss from {r['min_loss']:.4g} to {r['max_loss']:.4g}")
    lines.append(f"figure: {r['figure']}")
    return lines
