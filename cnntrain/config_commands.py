"""Commands that look at an experiment file before any training: its network (summary), its learning
rate at every step (schedule), the cost of its steps (bench) and its images as the network gets
them (preview). Each calls one function and prints; cli.py registers them."""

from __future__ import annotations

import json

import click


def config_and_overrides(command):
    """The CONFIG argument and its --set overrides, as each command here takes them."""
    command = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                           help="Override a config key.")(command)
    return click.argument("config", type=click.Path(exists=True, dir_okay=False))(command)


@click.command()
@config_and_overrides
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of layers and a totals object.")
def summary(config, overrides, as_json):
    """The network of CONFIG as a table: output shape, parameters, multiply-adds. No data, no training."""
    from .build import load_experiment
    from .inspection import summarize
    from .report import summary_lines

    s = summarize(load_experiment(config, overrides))
    if as_json:
        click.echo(json.dumps({"layers": s["layers"], "totals": s["totals"], "input_shape": s["input_shape"]}))
        return
    for line in summary_lines(s):
        click.echo(line)


@click.command()
@config_and_overrides
@click.option("--csv", "as_csv", is_flag=True, help="Print step,epoch,lr (and momentum) for every step.")
@click.option("--out", type=click.Path(dir_okay=False), help="Figure path (default: <name>-schedule.png).")
def schedule(config, overrides, as_csv, out):
    """The learning rate (and momentum) at every step of CONFIG's training, without training.

    Reads the dataset only to count the training images. The values are those a
    run records in steps.csv.
    """
    from .build import load_experiment
    from .inspection import schedule_table
    from .plots import plot_schedule
    from .runs import format_value

    exp = load_experiment(config, overrides)
    cfg = exp.cfg
    s = schedule_table(exp, log=lambda line: click.echo(line, err=True))
    table = s["table"]
    out = out or f"{cfg.name}-schedule.png"
    plot_schedule(table, s["steps_per_epoch"], out, f"{cfg.name}: {cfg.schedule.name} schedule")
    if as_csv:
        columns = list(table)
        click.echo(",".join(columns))
        for row in zip(*(table[c] for c in columns)):
            click.echo(",".join(str(format_value(v)) for v in row))
        return
    lr = table["lr"]
    click.echo(f"{cfg.name}: {len(lr)} steps ({s['steps_per_epoch']} per epoch, batch {s['batch_size']}); "
               f"lr {lr[0]:.4g} at step 1, max {lr.max():.4g}, {lr[-1]:.4g} at the last step")
    click.echo(f"figure: {out}")


@click.command()
@config_and_overrides
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per step (default: the config's).")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed training steps, at least (see --seconds).")
@click.option("--seconds", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Keep timing training steps until this long has passed, so that a short burst of other "
                   "work on the machine weighs as little as in a real epoch.")
@click.option("--profile/--no-profile", default=True, show_default=True,
              help="Also time each layer, in separate instrumented steps.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(config, overrides, batch_size, steps, seconds, profile, as_json):
    """Time training steps and inference of CONFIG's network on its training images (random ones if not on disk).

    Prints images/s as a real epoch counts them (the same step, preprocessing included),
    GFLOP/s against NumPy's own GEMM speed, peak memory, and where the time goes layer by
    layer, so you see the cost of an experiment before launching it. BLAS threads follow
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS.
    """
    from .bench import benchmark
    from .build import load_experiment
    from .report import bench_lines

    r = benchmark(load_experiment(config, overrides), batch_size, steps, profile=profile, min_seconds=seconds)
    if as_json:
        click.echo(json.dumps(r))
        return
    for line in bench_lines(r):
        click.echo(line)


@click.command()
@config_and_overrides
@click.option("--count", type=click.IntRange(min=1, max=64), default=16, show_default=True,
              help="Images shown (from the first batch of the epoch).")
@click.option("--epoch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which epoch's first batch (the shuffle and augmentation differ per epoch).")
@click.option("--out", type=click.Path(dir_okay=False), help="Figure path (default: <name>-preview.png).")
def preview(config, overrides, count, epoch, out):
    """The training images of CONFIG as stored and as the network gets them, without training.

    Draws the first images of an epoch's first batch before and after data.augment, and prints
    the preprocessing (with the statistics fitted on the training split) and the range of the
    preprocessed batch, so a wrong crop, flip or normalisation shows before a run is spent on it.
    """
    from .build import load_experiment
    from .inspection import preview_batch
    from .plots import plot_preview

    exp = load_experiment(config, overrides)
    cfg = exp.cfg
    p = preview_batch(exp, count, epoch - 1, log=lambda line: click.echo(line, err=True))
    out = out or f"{cfg.name}-preview.png"
    plot_preview(p["raw"], p["augmented"], p["labels"], p["classes"], out,
                 f"{cfg.name}: epoch {epoch}, first batch ({p['batch_size']} images)")
    for line in p["preprocess"]:
        click.echo(f"preprocess {line}")
    click.echo(f"augment: {', '.join(p['augment']) or 'none'}")
    s = p["input_stats"]
    click.echo(f"network input of this batch: min {s['min']:.4g}, max {s['max']:.4g}, mean {s['mean']:.4g}, "
               f"std {s['std']:.4g}")
    click.echo(f"figure: {out}")
