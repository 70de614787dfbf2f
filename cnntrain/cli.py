"""The `cnntrain` command: thin click commands that parse, call one function, and print.

No NumPy here (it is imported by the functions the commands call), so `--help` starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import CnnTrainError


class Group(click.Group):
    """Turns CnnTrainError into one line on stderr and its exit code (2 config/usage, 1 runtime)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnTrainError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cnntrain")
def cli():
    """Train and understand convolutional networks written in plain NumPy."""


@cli.command()
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key, e.g. --set optimizer.lr=0.01 (value read as YAML). Repeatable.")
@click.option("--name", help="Run name (default: the config's name, else the file name).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where run directories are created.")
@click.option("--print-config", is_flag=True, help="Print the resolved config (defaults filled in) and exit.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), metavar="RUN_DIR",
              help="Continue an interrupted run from its checkpoints/last.npz (only --set train.epochs=N allowed).")
@click.option("--grid", "grids", multiple=True, metavar="KEY.PATH=V1,V2,...",
              help="Train every combination of these values (repeatable) into one group directory, then compare.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Grid runs trained at once, in separate processes sharing the cores.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files (--set train.tensorboard=true).")
def run(config, overrides, name, runs_dir, print_config, resume_dir, grids, jobs, tensorboard):
    """Train the network described by the experiment file CONFIG.

    Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits
    130 or 143; `cnntrain run --resume RUN_DIR` then continues exactly.
    """
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if resume_dir is not None:
        if config is not None or name is not None or print_config or tensorboard:
            raise click.UsageError("--resume RUN_DIR takes no CONFIG, --name, --print-config or --tensorboard")
        epochs = None
        for assignment in overrides:
            key, _, value = assignment.partition("=")
            if key.strip() != "train.epochs" or not value.strip().isdigit() or int(value) < 1:
                raise click.UsageError(f"--resume allows only --set train.epochs=N (N >= 1), got --set {assignment}")
            epochs = int(value)
        from .session import resume_run

        _print_summary(resume_run(resume_dir, epochs, echo=echo))
        return
    if config is None:
        raise click.UsageError("missing CONFIG (or --resume RUN_DIR)")
    overrides += ("train.tensorboard=true",) if tensorboard else ()
    if grids:
        if name is not None or print_config:
            raise click.UsageError("--grid takes no --name or --print-config")
        from .grid import compare_group, run_grid
        from .report import compare_lines

        group = run_grid(config, overrides, grids, runs_dir, jobs, echo=echo)
        figure, rows = compare_group(group)
        for line in compare_lines(rows):
            click.echo(line)
        click.echo(f"figure: {figure}")
        click.echo(f"table: {group / 'compare.json'}")
        return
    from .build import load_experiment

    exp = load_experiment(config, overrides + ((f"name={json.dumps(name)}",) if name is not None else ()))
    if print_config:
        click.echo(exp.cfg.to_yaml(), nl=False)
        return
    from .session import train_from_config

    _print_summary(train_from_config(exp, runs_dir, echo=echo))


def _print_summary(s: dict) -> None:
    from .report import final_line

    click.echo(final_line(s))


@cli.command("eval")
@click.argument("target", metavar="CHECKPOINT_OR_RUN_DIR", type=click.Path(exists=True))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass (default: the config's).")
def eval_(target, split, as_json, batch_size):
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint.

    A run directory means its checkpoints/best.npz. The confusion matrix is also
    saved as a PNG beside the run.
    """
    from .inspection import evaluate_checkpoint
    from .plots import plot_confusion
    from .report import eval_lines, pct

    result = evaluate_checkpoint(target, split, batch_size, log=lambda line: click.echo(line, err=True))
    ckpt = Path(result["checkpoint"])
    out_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    png = out_dir / f"confusion_{split}_{ckpt.stem}.png"
    plot_confusion(result["confusion_matrix"], result["classes"], png,
                   f"{split} split, {ckpt.name}: accuracy {pct(result['accuracy'])}")
    result["confusion_png"] = str(png)
    if as_json:
        click.echo(json.dumps(result))
        return
    for line in eval_lines(result, split):
        click.echo(line)
    click.echo(f"confusion matrix figure: {png}")


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--metric", "metrics", multiple=True, metavar="M",
              help="A metrics.csv column to plot (train_loss, val_loss, train_acc, val_acc, lr, reg_loss, ...); "
                   "repeatable. Default: panels for loss, accuracy and lr.")
@click.option("--x", "x_axis", type=click.Choice(["epoch", "step", "time"]), default="epoch", show_default=True)
@click.option("--smooth", type=click.FloatRange(0, 1, max_open=True), metavar="BETA",
              help="Exponentially weighted average, beta 0.9 = about 10 points of memory.")
@click.option("--logy", is_flag=True, help="Logarithmic y axis for losses and lr.")
@click.option("--out", type=click.Path(dir_okay=False), default="compare.png", show_default=True)
@click.option("--label", "labels", multiple=True, metavar="KEY.PATH",
              help="Label runs by this config key (repeatable), e.g. --label optimizer.lr.")
@click.option("--group-by", "group_by", multiple=True, metavar="KEY.PATH",
              help="One mean curve (min-max band) and table row per value of this config key (repeatable).")
@click.option("--mean-over-seeds", is_flag=True, help="Group runs whose configs differ only in seed (and name).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def compare(runs, metrics, x_axis, smooth, logy, out, labels, group_by, mean_over_seeds, as_json):
    """Overlay the curves of several runs in one figure and print a table.

    RUN_DIR may be a run directory, a glob, or a folder of runs. Runs are labelled by
    the config keys that differ between them (e.g. optimizer.name=adam; architectures
    by a short layer summary), or by --label keys. The table gives each run's best value
    of the metric it monitored (train.monitor) and its epoch, as in summary.json; grouped,
    each group's mean and std of it over its runs.
    """
    from .compare import compare_runs
    from .report import compare_lines, group_lines

    figure, rows = compare_runs(runs, metrics, x_axis, smooth, logy, out, labels, group_by, mean_over_seeds)
    grouped = bool(group_by or mean_over_seeds)
    if as_json:
        click.echo(json.dumps({"groups" if grouped else "runs": rows, "figure": str(figure)}))
        return
    for line in (group_lines if grouped else compare_lines)(rows):
        click.echo(line)
    click.echo(f"figure: {figure}")


@cli.command()
@click.option("--function", "function", default="rosenbrock", show_default=True,
              help="ravine, saddle, rosenbrock, beale, two_minima or poly.")
@click.option("--optimizers", default="sgd,momentum,nesterov,adagrad,rmsprop,adam", show_default=True,
              help="Comma-separated optimizer names (the classes used for training).")
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--lr", "lrs", multiple=True, metavar="LR|NAME=LR",
              help="Step size for all optimizers, or for one (adam=0.05). Default: the function's.")
@click.option("--start", metavar="X,Y", help="Starting point (default: the function's).")
@click.option("--noise", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Standard deviation of Gaussian noise added to every gradient (stochastic gradients).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the gradient noise.")
@click.option("--out", type=click.Path(dir_okay=False), default="surface.png", show_default=True,
              help="A .png figure, or a .gif animation of the descent.")
def surface(function, optimizers, steps, lrs, start, noise, seed, out):
    """Optimizer trajectories on a two-dimensional test function, over its contour plot.

    Prints where each optimizer ended, the gradient norm there, and what the Hessian's
    eigenvalues say the point is: minimum, maximum, saddle or undetermined.
    """
    from .surface import descend, endpoint_lines, get_function, parse_rates, parse_start
    from .plots import plot_surface

    fn = get_function(function)
    paths = descend(fn, [n.strip() for n in optimizers.split(",") if n.strip()], parse_rates(lrs), steps,
                    parse_start(start, fn), noise, seed)
    if not out.lower().endswith((".png", ".gif")):
        raise click.BadParameter("the figure must be a .png or .gif file", param_hint="--out")
    plot_surface(function, fn, paths, out, animate=out.lower().endswith(".gif"))
    click.echo(f"{function}: {fn.about}")
    for line in endpoint_lines(fn, paths):
        click.echo(line)
    click.echo(f"figure: {out}")


@cli.command()
@click.argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, metavar="IMAGE_OR_FOLDER...")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per image.")
def predict(checkpoint, images, top_k, as_json):
    """Top-k classes for JPG/PNG/BMP images, preprocessed exactly as in training.

    Images are converted to the network's channels and resized to its input size;
    a folder means every image in it.
    """
    from .predict import predict_images

    results = predict_images(checkpoint, images, top_k)
    if as_json:
        click.echo(json.dumps(results))
        return
    for r in results:
        tops = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
        click.echo(f"{r['image']}: {tops}")


from .sweep.command import sweep  # noqa: E402  (its module holds the command: cli.py stays one screenful per command)
from .export.command import export  # noqa: E402
from .insight.commands import hessian, landscape, lr_find  # noqa: E402
from .config_commands import bench, preview, schedule, summary  # noqa: E402

cli.add_command(sweep)
cli.add_command(hessian)
cli.add_command(export)
cli.add_command(lr_find)
cli.add_command(landscape)
for command in (summary, schedule, bench, preview):
    cli.add_command(command)


def main():
    from .threads import quiet_idle_blas_threads

    quiet_idle_blas_threads()  # before NumPy loads OpenBLAS
    cli(prog_name="cnntrain")


if __name__ == "__main__":
    main()
