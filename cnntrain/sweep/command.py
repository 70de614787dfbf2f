"""`cnntrain sweep`: the click command (no NumPy or Ray here, so `cnntrain --help` stays fast)."""

from __future__ import annotations

import click


@click.command()
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key of every trial (value read as YAML). Repeatable.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where trials run: processes on this machine, or tasks on a Ray cluster.")
@click.option("--address", metavar="auto|HOST:PORT", help="Ray: join this running cluster (default: start a local Ray).")
@click.option("--jobs", type=click.IntRange(min=1),
              help="Trials at once (local: processes sharing the cores, default 1; ray: default all the cluster holds).")
@click.option("--cpus-per-trial", type=click.IntRange(min=1), metavar="K",
              help="CPUs (and BLAS threads) per trial (local default: cores // running trials, "
                   "rechecked every epoch; ray default: 1).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where the sweep's group folder is created.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), metavar="GROUP_DIR",
              help="Continue an interrupted sweep: finished trials stay, interrupted ones resume from checkpoints.")
def sweep(config, overrides, executor, address, jobs, cpus_per_trial, runs_dir, resume_dir):
    """Train many runs of CONFIG, as its `sweep:` section says: a grid, random draws, seeds, successive halving.

    Every trial is an ordinary run directory in one group folder, with sweep.json (every
    trial: parameters, seed, status, metric, epochs, node, wall time), compare.png and a
    sensitivity plot per sampled numeric parameter. The table averages over seeds, best first.
    Ctrl-C stops every trial at a checkpoint; --resume GROUP_DIR continues.
    """
    from .main import make_executor, resume_sweep, run_sweep, table_lines

    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    make = lambda: make_executor(executor, jobs, cpus_per_trial, address)  # noqa: E731
    if address is not None and executor != "ray":
        from ..errors import ConfigError

        raise ConfigError("--address is for --executor ray")
    if resume_dir is not None:
        if config is not None or overrides:
            raise click.UsageError("--resume GROUP_DIR takes no CONFIG or --set")
        group, rows = resume_sweep(resume_dir, make, echo=echo)
    elif config is None:
        raise click.UsageError("missing CONFIG (or --resume GROUP_DIR)")
    else:
        group, rows = run_sweep(config, overrides, make, runs_dir, echo=echo)
    from .runner import load_sweep

    for line in table_lines(rows, load_sweep(group)["metric"]):
        click.echo(line)
    click.echo(f"sweep: {group / 'sweep.json'}")
