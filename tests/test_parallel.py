"""Data parallel steps: W processes on shares of a batch give the one-process step, up to rounding.

Float64 networks make "up to rounding" tight: batchnorm statistics are summed over all ranks
(so they are the whole batch's), dropout masks are the ones a single process would draw, and
the gradients of the shares add up to the batch mean's.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.build import build_model
from cnntrain.cli import cli
from cnntrain.errors import RunError
from cnntrain.parallel import MIN_AUTO_MACS, DataParallel, choose_workers
from cnntrain.registry import LOSSES, OPTIMIZERS
from cnntrain.runs import load_checkpoint
from cnntrain.train import batch_gradients, train_step
from cnntrain.threads import THREAD_VARIABLES

LAYERS = [("conv2d", {"filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False}), ("batchnorm", {}),
          ("relu", {}), ("maxpool2d", {"size": 2}), ("conv2d", {"filters": 6, "kernel_size": 3, "use_bias": False}), ("batchnorm", {}),
          ("relu", {}), ("flatten", {}), ("dropout", {"rate": 0.4}), ("dense", {"units": 12, "use_bias": False}), ("batchnorm", {}),
          ("tanh", {}), ("dropout", {"rate": 0.2}), ("dense", {"units": 5})]


def network(layers=LAYERS, dtype=np.float64):
    model = build_model(layers, (2, 8, 8), np.random.default_rng(0)).astype(dtype)
    model.rng = np.random.default_rng(7)
    return model


def batch(n, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 8, 8)).astype(dtype), rng.integers(0, 5, n)


def same(x):
    return x


@pytest.mark.parametrize("workers,n", [(2, 16), (3, 11)])
def test_shares_give_the_one_process_gradients_statistics_and_masks(workers, n):
    loss = LOSSES.create("softmax_cross_entropy")
    serial, parallel = network(), network()
    x, y = batch(n)
    want_loss, want_correct, want = batch_gradients(serial, loss, x, y, same, n)
    with DataParallel(parallel, loss, workers, rows=n) as dp:
        got_loss, got_correct, got = dp(parallel, loss, x, y, same, n)
        assert len(dp.procs) == workers - 1
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    assert got_correct == want_correct
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-13, err_msg=key)
    for key, buf in serial.named_buffers().items():  # running statistics from the whole batch's
        np.testing.assert_allclose(parallel.named_buffers()[key], buf, rtol=1e-12, err_msg=key)
    # the masks came from the model's generator, in the order one process draws them
    assert parallel.rng.bit_generator.state == serial.rng.bit_generator.state


def test_training_steps_follow_the_one_process_steps_and_workers_see_each_update():
    loss = LOSSES.create("softmax_cross_entropy")
    serial, parallel = network(), network()
    opt_s, opt_p = (OPTIMIZERS.create("adam", {"lr": 0.01}) for _ in range(2))
    with DataParallel(parallel, loss, 2, rows=12) as dp:
        for step in range(6):
            x, y = batch(12, seed=step)
            a = train_step(serial, loss, opt_s, x, y, same, 0.01, 12)
            b = train_step(parallel, loss, opt_p, x, y, same, 0.01, 12, gradients=dp)
            assert b[0] == pytest.approx(a[0], rel=1e-10)
    for key, p in serial.named_params().items():
        np.testing.assert_allclose(parallel.named_params()[key], p, rtol=1e-9, atol=1e-12, err_msg=key)


def test_float32_matches_to_float32_rounding():
    loss = LOSSES.create("softmax_cross_entropy")
    serial, parallel = network(dtype=np.float32), network(dtype=np.float32)
    x, y = batch(32, np.float32)
    _, _, want = batch_gradients(serial, loss, x, y, same, 32)
    with DataParallel(parallel, loss, 2, rows=32) as dp:
        _, _, got = dp(parallel, loss, x, y, same, 32)
    for key in want:
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=2e-6 * np.abs(want[key]).max(), err_msg=key)


def test_batches_it_cannot_split_run_in_this_process():
    loss = LOSSES.create("softmax_cross_entropy")
    model = network()
    with DataParallel(model, loss, 3, rows=8) as dp:
        x, y = batch(2)  # fewer rows than workers
        dp(model, loss, x, y, same, 8)
        x, y = batch(12)
        dp(model, loss, x, y, same, 12)  # more rows in one pass than the shared memory holds
        assert dp.procs == []
        dp(model, loss, x, y, same, 8)
        assert len(dp.procs) == 2
    assert dp.procs == []


@pytest.mark.parametrize("workers,n,chunk", [(2, 20, 8), (3, 14, 6)])
def test_chunked_steps_split_every_chunk_and_match_the_one_process_chunks(workers, n, chunk):
    # (2, 20, 8): chunks of 8, 8 and 4 rows; (3, 14, 6): the last chunk has 2 rows, fewer than
    # the workers, and runs in this process. Each chunk keeps its own batchnorm statistics and
    # dropout seeds, and the running statistics follow the chunks in order, as in one process.
    loss = LOSSES.create("softmax_cross_entropy")
    serial, parallel = network(), network()
    opt_s, opt_p = (OPTIMIZERS.create("adam", {"lr": 0.01}) for _ in range(2))
    with DataParallel(parallel, loss, workers, rows=chunk) as dp:
        for step in range(3):
            x, y = batch(n, seed=step)
            a = train_step(serial, loss, opt_s, x, y, same, 0.01, chunk)
            b = train_step(parallel, loss, opt_p, x, y, same, 0.01, chunk, gradients=dp)
            assert b[0] == pytest.approx(a[0], rel=1e-10)
            assert b[1] == a[1]
        assert len(dp.procs) == workers - 1
    for key, p in serial.named_params().items():
        np.testing.assert_allclose(parallel.named_params()[key], p, rtol=1e-9, atol=1e-12, err_msg=key)
    for key, buf in serial.named_buffers().items():
        np.testing.assert_allclose(parallel.named_buffers()[key], buf, rtol=1e-12, err_msg=key)
    assert parallel.rng.bit_generator.state == serial.rng.bit_generator.state


def test_steps_run_in_this_process_while_other_runs_leave_fewer_cores_than_workers():
    loss = LOSSES.create("softmax_cross_entropy")
    serial, parallel = network(), network()
    budget = [1]
    x, y = batch(8)
    with DataParallel(parallel, loss, 2, rows=8, budget=lambda: budget[0]) as dp:
        _, _, got = dp(parallel, loss, x, y, same, 8)
        assert dp.procs == []
        _, _, want = batch_gradients(serial, loss, x, y, same, 8)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        budget[0] = 2
        dp(parallel, loss, x, y, same, 8)
        assert len(dp.procs) == 1


def test_a_worker_that_fails_is_a_run_error_with_its_message():
    loss = LOSSES.create("softmax_cross_entropy")
    model = network()
    x, y = batch(8)
    y[6] = 9  # a label only worker 1's rows hold, past the 5 outputs
    with DataParallel(model, loss, 2, rows=8) as dp:
        with pytest.raises(RunError, match="data parallel worker 1 failed: .*"):
            dp(model, loss, x, y, same, 8)
        assert dp.procs == [], "a failed step stops the workers"
        y[6] = 1
        dp(model, loss, x, y, same, 8)  # the next step starts new ones


@pytest.mark.parametrize("layers", [LAYERS, [("flatten", {}), ("dense", {"units": 5})]], ids=["batchnorm", "plain"])
def test_a_worker_that_dies_is_a_run_error_not_a_hang(layers):
    loss = LOSSES.create("softmax_cross_entropy")
    model = network(layers)
    x, y = batch(8)
    with DataParallel(model, loss, 2, rows=8) as dp:
        dp(model, loss, x, y, same, 8)
        dp.procs[0].kill()
        dp.procs[0].wait()
        started = time.monotonic()
        with pytest.raises(RunError, match="data parallel worker 1 stopped"):
            dp(model, loss, x, y, same, 8)
        assert time.monotonic() - started < 10


def test_start_readies_the_workers_before_any_step_and_a_worker_that_cannot_start_is_a_run_error(monkeypatch):
    loss = LOSSES.create("softmax_cross_entropy")
    serial, parallel = network(), network()
    x, y = batch(8)
    with DataParallel(parallel, loss, 2, rows=8) as dp:
        dp.start(x[:1], y[:1])
        (proc,) = dp.procs
        assert proc.poll() is None and not dp.conns[0].poll(), "started, and its ready message already taken"
        dp.start(x[:1], y[:1])
        assert dp.procs == [proc], "a second start changes nothing"
        _, _, got = dp(parallel, loss, x, y, same, 8)
        assert dp.procs == [proc]
        _, _, want = batch_gradients(serial, loss, x, y, same, 8)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12, err_msg=key)

    import cnntrain.parallel as parallel_module

    monkeypatch.setattr(parallel_module.sys, "executable", "/bin/false")  # a worker that exits at once
    with DataParallel(network(), loss, 2, rows=8) as dp:
        started = time.monotonic()
        with pytest.raises(RunError, match=r"data parallel worker 1 stopped \(exit code 1\)"):
            dp.start(x[:1], y[:1])
        assert dp.procs == [] and dp.arrays is None and time.monotonic() - started < 10


def test_a_worker_that_ends_before_it_gets_the_network_is_a_run_error(monkeypatch):
    import cnntrain.parallel as parallel_module

    real_popen = parallel_module.subprocess.Popen

    def ended(args, **kwargs):  # /bin/false, already gone when rank 0 sends the network
        proc = real_popen(["/bin/false"], **kwargs)
        proc.wait()
        return proc

    monkeypatch.setattr(parallel_module.subprocess, "Popen", ended)
    x, y = batch(8)
    with DataParallel(network(), LOSSES.create("softmax_cross_entropy"), 2, rows=8) as dp:
        with pytest.raises(RunError, match=r"data parallel worker 1 stopped \(exit code 1\)"):
            dp.start(x[:1], y[:1])
        assert dp.procs == [] and dp.arrays is None


def test_a_run_starts_its_workers_before_the_first_epoch_is_timed(tmp_path, monkeypatch):
    import cnntrain.session as session

    seen = []
    real_fit = session.fit
    monkeypatch.setattr(session, "fit", lambda *a, **k: seen.append(len(k["gradients"].procs)) or real_fit(*a, **k))
    run(tmp_path, 2, "--set", "train.epochs=1")
    assert seen == [1], "the worker was running when fit() began"


def test_workers_end_with_the_process_that_started_them(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_parallel import network, batch, same
from cnntrain.parallel import DataParallel
from cnntrain.registry import LOSSES, OPTIMIZERS
loss = LOSSES.create("softmax_cross_entropy")
model = network()
dp = DataParallel(model, loss, 3, rows=8)
x, y = batch(8)
dp(model, loss, x, y, same, 8)
print(" ".join(str(p.pid) for p in dp.procs), flush=True)
import os
os._exit(0)  # no close(): the workers must notice on their own
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def no_thread_env(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_auto_uses_a_process_per_blas_thread_only_for_steps_worth_it(monkeypatch, no_thread_env):
    monkeypatch.setattr("cnntrain.threads.cores", lambda: 4)
    big = MIN_AUTO_MACS // 64 + 1
    assert choose_workers("auto", None, 1, big, 64, 64) == 4
    assert choose_workers("auto", None, 2, big, 64, 64) == 2, "two live runs halve the cores"
    assert choose_workers("auto", None, 4, big, 64, 64) == 1
    assert choose_workers("auto", 2, 1, big, 64, 64) == 2, "train.threads"
    assert choose_workers("auto", None, 1, big // 4, 64, 64) == 1, "too little work per step"
    assert choose_workers("auto", None, 1, 2 * big, 64, 32) == 4, "a chunked step splits each chunk"
    assert choose_workers("auto", None, 1, big, 64, 32) == 1, "too little work per chunk"
    assert choose_workers("auto", None, 1, 10**9, 16, 16) == 2, "at least 8 rows per process"
    assert choose_workers(3, None, 4, 1, 64, 64) == 3, "a number is taken as it is"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_workers("auto", None, 1, big, 64, 64) == 1, "an explicit environment wins"


CONFIG = """
name: dp
seed: 3
data: {dataset: mnist, download: false, validation: 200, limit_train: 960, limit_val: 200, limit_test: 200,
       preprocess: [standardize], augment: [{random_crop: {padding: 2}}]}
model:
  layers:
    - conv2d: {filters: 6, kernel_size: 3, use_bias: false}
    - batchnorm
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dropout: {rate: 0.3}
    - dense: {units: 10}
optimizer: {name: adam, lr: 0.002}
train: {epochs: 2, batch_size: 32, workers: WORKERS}
"""


def run(tmp_path, workers, *extra):
    path = tmp_path / f"dp{workers}.yaml"
    path.write_text(CONFIG.replace("WORKERS", str(workers)))
    runs = tmp_path / f"runs{workers}"
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(runs), *extra])
    assert result.exit_code == 0, result.output
    (run_dir,) = runs.iterdir()
    return run_dir, result.output


def test_a_run_with_two_workers_trains_like_one_and_resumes_exactly(tmp_path):
    one, _ = run(tmp_path, 1)
    two, output = run(tmp_path, 2, "--set", "train.epochs=1")
    assert "data parallel: 2 processes share each batch (train.workers: 2)" in output
    result = CliRunner().invoke(cli, ["run", "--resume", str(two), "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    (tmp_path / "straight").mkdir()
    straight, _ = run(tmp_path / "straight", 2)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["status"] == "completed"
    a, b, c = (load_checkpoint(d / "checkpoints" / "last.npz")[2] for d in (one, two, straight))
    for key in a:
        np.testing.assert_array_equal(b[key], c[key], err_msg=f"resumed != straight: {key}")
        np.testing.assert_allclose(b[key], a[key], rtol=2e-3, atol=2e-4, err_msg=f"2 workers != 1: {key}")
    first = [row.split(",")[2] for row in (one / "steps.csv").read_text().splitlines()[1:4]]
    second = [row.split(",")[2] for row in (two / "steps.csv").read_text().splitlines()[1:4]]
    np.testing.assert_allclose(np.array(second, float), np.array(first, float), rtol=1e-5)


@pytest.mark.slow
def test_ctrl_c_to_the_whole_terminal_group_still_checkpoints_and_exits_130(tmp_path):
    path = tmp_path / "dp.yaml"
    path.write_text(CONFIG.replace("WORKERS", "2").replace("epochs: 2", "epochs: 40"))
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "cnntrain", "run", str(path), "--runs-dir", str(runs)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        steps = None
        while time.monotonic() < deadline:
            steps = next(runs.glob("*/steps.csv"), None) if runs.exists() else None
            if steps and sum(1 for _ in open(steps)) > 40:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the workers get it too
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_dir = steps.parent
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.05)
    assert not _group_alive(proc.pid), "a worker outlived its run"
    result = CliRunner().invoke(cli, ["run", "--resume", str(run_dir), "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(_alive(int(p.name)) for p in Path("/proc").iterdir()
               if p.name.isdigit() and _pgid(p) == pgid)


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _channel_pair(fds):
    """A sender's and a receiver's Channel over one pair of shared lines and one pipe."""
    from cnntrain.ipc import LINE, Channel

    lines = np.zeros((2, LINE), dtype=np.int64)
    return Channel(lines, fds[1]), Channel(lines, fds[0])


def _later(seconds, action):
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_a_signal_passes_in_shared_memory_while_the_receiver_spins_and_by_pipe_once_it_sleeps(monkeypatch):
    import cnntrain.ipc as ipc

    r, w = os.pipe()
    try:
        sender, receiver = _channel_pair((r, w))
        sender.ring()
        sender.ring()
        syscalls = []
        monkeypatch.setattr(ipc.os, "read", lambda *a: syscalls.append(a))
        assert receiver.wait() and receiver.wait()  # both came, in order, with no read of the pipe
        assert syscalls == [] and os.get_blocking(r)
        monkeypatch.undo()
        started = time.perf_counter()
        timer = _later(0.1, sender.ring)  # long after the 10 ms spin: the receiver sleeps on the pipe
        try:
            assert receiver.wait(seconds=0.01)
        finally:
            timer.join()
        assert 0.1 <= time.perf_counter() - started < 1
        assert receiver.asleep[0] == 0  # awake again: the next ring writes no byte
        sender.ring()
        assert receiver.wait()
    finally:
        os.close(r)
        os.close(w)


def test_a_sleeping_receiver_sees_a_signal_whose_byte_was_never_written():
    """The sender may read the asleep mark before the receiver's write of it shows: no byte then,
    and the receiver's periodic look at the count still finds the signal."""
    r, w = os.pipe()
    results = []
    try:
        sender, receiver = _channel_pair((r, w))

        def ring_without_byte():
            sender.sent[0] += 1

        timer = _later(0.05, ring_without_byte)
        waiter = threading.Thread(target=lambda: results.append(receiver.wait(seconds=0)), daemon=True)
        waiter.start()
        waiter.join(timeout=2)  # a lost signal would wait forever: not inside the test run
        timer.join()
        assert results == [True]
    finally:
        if not results:
            sender.ring(failed=True)  # let the stuck waiter go before its pipe closes
            waiter.join(timeout=2)
        os.close(r)
        os.close(w)


def test_a_failed_or_dead_sender_ends_the_wait_with_false():
    r, w = os.pipe()
    try:
        sender, receiver = _channel_pair((r, w))
        sender.ring(failed=True)
        assert not receiver.wait()  # spinning
        sender2, receiver2 = _channel_pair((r, w))
        timer = _later(0.05, lambda: sender2.ring(failed=True))
        try:
            assert not receiver2.wait(seconds=0)  # asleep: the failure's byte wakes it
        finally:
            timer.join()
        _, receiver3 = _channel_pair((r, w))
        timer = _later(0.05, lambda fd=w: os.close(fd))  # the sender's process ended: its end of the pipe closes
        w = None
        started = time.perf_counter()
        try:
            assert not receiver3.wait(seconds=0.01)
        finally:
            timer.join()
        assert time.perf_counter() - started < 1
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_the_spinning_receiver_yields_the_core_at_every_turn(monkeypatch):
    """Two ranks on one core: the waiting one must let the other run, or each wait burns its time."""
    import cnntrain.ipc as ipc

    yields = []
    monkeypatch.setattr(ipc.os, "sched_yield", lambda: yields.append(1))
    r, w = os.pipe()
    try:
        sender, receiver = _channel_pair((r, w))
        timer = _later(0.03, sender.ring)
        try:
            assert receiver.wait(seconds=0.02)
        finally:
            timer.join()
        assert len(yields) > 10  # every look of the 20 ms spin that found nothing gave the core away
        yields.clear()
        sender.ring()
        assert receiver.wait()
        assert yields == []  # the signal already there: no wait, nothing to give away
    finally:
        os.close(r)
        os.close(w)
