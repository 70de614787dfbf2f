"""The thread policy: concurrent training processes share the cores instead of spinning against each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cnntrain import threads
from cnntrain.cli import cli
from cnntrain.threads import THREAD_VARIABLES, TrainingProcesses, blas_threads, choose, set_blas_threads


@pytest.fixture
def no_thread_env(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def small_run_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("data: {dataset: mnist, download: false, validation: 50, limit_train: 256, limit_val: 50, "
                    "limit_test: 50}\nmodel: {layers: [flatten, {dense: {units: 10}}]}\n"
                    "train: {epochs: 2, batch_size: 64}\n")
    return path


@pytest.fixture
def sleeper():
    """A live process other than this one (stands for another cnntrain run), stopped afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_cores_are_divided_between_live_runs_unless_told_otherwise(monkeypatch, no_thread_env):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    assert [choose(None, live)[0] for live in (1, 2, 3, 4, 5, 9)] == [4, 2, 1, 1, 1, 1]  # max(1, 4 // live)
    assert choose(None, 2)[1] == "2 cnntrain runs training on 4 cores"
    assert choose(3, 2) == (3, "train.threads")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert choose(None, 2) == (None, "OPENBLAS_NUM_THREADS=2")
    assert choose(1, 2) == (1, "train.threads"), "train.threads is the experiment's own choice"


def test_registry_counts_live_processes_and_drops_dead_and_reused_pids(tmp_path, sleeper):
    folder = tmp_path / "training"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with TrainingProcesses(folder) as me:
        assert me.entry.is_file() and me.count() == 1
        (folder / str(sleeper.pid)).write_text(threads._start_time(sleeper.pid) or "")
        (folder / str(dead.pid)).write_text("123")
        (folder / str(os.getppid())).write_text("1")  # a live pid whose start time does not match: reused
        (folder / "notes.txt").write_text("ignored")
        assert me.count() == 2
        assert sorted(p.name for p in folder.iterdir()) == sorted([str(os.getpid()), str(sleeper.pid), "notes.txt"])
    assert not me.entry.exists()


def test_a_second_run_lowers_blas_threads_and_says_so_once(tmp_path, monkeypatch, no_thread_env, sleeper,
                                                            small_run_config):
    monkeypatch.setenv("CNNTRAIN_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setattr(threads, "cores", lambda: 2)
    set_blas_threads(2)
    folder = threads.registry_dir()
    folder.mkdir(parents=True)
    (folder / str(sleeper.pid)).write_text(threads._start_time(sleeper.pid) or "")
    result = CliRunner().invoke(cli, ["run", str(small_run_config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("threads:")]
    assert lines == ["threads: 2 cnntrain runs training on 2 cores, so this run uses 1 BLAS thread instead of 2 "
                     "(set train.threads or OMP_NUM_THREADS to choose)"], result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["blas_threads"] == 1
    assert blas_threads() == 2, "the process gets its own thread count back after training"
    assert sorted(p.name for p in folder.iterdir()) == [str(sleeper.pid)], "the run removed its own entry"

    result = CliRunner().invoke(cli, ["run", str(small_run_config), "--runs-dir", str(tmp_path / "runs2"),
                                      "--set", "train.threads=2"])
    assert result.exit_code == 0 and "threads:" not in result.output
    (run_dir,) = (tmp_path / "runs2").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["blas_threads"] == 2


def test_an_explicit_environment_variable_wins(tmp_path, monkeypatch, no_thread_env, sleeper, small_run_config):
    monkeypatch.setenv("CNNTRAIN_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    set_blas_threads(2)
    folder = threads.registry_dir()
    folder.mkdir(parents=True)
    (folder / str(sleeper.pid)).write_text(threads._start_time(sleeper.pid) or "")
    result = CliRunner().invoke(cli, ["run", str(small_run_config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0 and "threads:" not in result.output, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["blas_threads"] == 2


def test_train_threads_must_be_positive(tmp_path, small_run_config):
    result = CliRunner().invoke(cli, ["run", str(small_run_config), "--set", "train.threads=0", "--print-config"])
    assert result.exit_code == 2 and "train.threads: must be >= 1, got 0" in result.output


def test_the_cli_lets_idle_openblas_threads_sleep_unless_the_user_chose(monkeypatch):
    from cnntrain.cli import main

    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.setattr(sys, "argv", ["cnntrain", "--version"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    threads.quiet_idle_blas_threads()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "20", "the user's own setting stays"
    # the CLI module loads no NumPy, so the setting is in place when a command first imports it
    out = subprocess.run([sys.executable, "-c", "import sys, cnntrain.cli; print('numpy' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_blas_library_names_the_kernels_and_whether_the_environment_chose_them(monkeypatch):
    from types import SimpleNamespace

    openblas = SimpleNamespace(internal_api="openblas", version="0.3.31", architecture="Haswell", user_api="blas")
    mkl = SimpleNamespace(internal_api="mkl", version="2024.1", user_api="blas")
    monkeypatch.setattr(threads, "_blas_libraries", lambda: [openblas])
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert threads.blas_library() == "OpenBLAS 0.3.31, Haswell kernels"
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert threads.blas_library() == "OpenBLAS 0.3.31, Haswell kernels (set by OPENBLAS_CORETYPE)"
    monkeypatch.setattr(threads, "_blas_libraries", lambda: [mkl])
    assert threads.blas_library() == "MKL 2024.1", "MKL ignores OPENBLAS_CORETYPE and names no kernels"
    monkeypatch.setattr(threads, "_blas_libraries", lambda: [])
    assert threads.blas_library() == "unknown BLAS"


def test_blas_library_reports_the_kernels_openblas_loaded():
    """In a fresh process asked for other kernels, the name is what threadpoolctl reads off NumPy's OpenBLAS."""
    code = ("from cnntrain.threads import blas_library; import threadpoolctl; "
            "print(blas_library()); print([i.get('architecture') for i in threadpoolctl.threadpool_info()])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENBLAS_CORETYPE": "Sandybridge"}).stdout.splitlines()
    assert out[0].startswith("OpenBLAS ") and out[0].endswith(", Sandybridge kernels (set by OPENBLAS_CORETYPE)"), out
    assert out[1] == "['Sandybridge']", out


def test_bench_hints_at_avx512_kernels_only_when_the_environment_keeps_openblas_off_them(monkeypatch, tmp_path):
    from types import SimpleNamespace

    avx512 = tmp_path / "avx512"
    avx512.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert threads.cpu_flags(str(avx2)) == {"fpu", "sse", "avx2", "fma"}
    assert threads.cpu_flags(str(tmp_path / "missing")) == frozenset()
    loaded = SimpleNamespace(internal_api="openblas", version="0.3.31", architecture="Haswell", user_api="blas")
    monkeypatch.setattr(threads, "_blas_libraries", lambda: [loaded])
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    hint = threads.blas_hint(str(avx512))
    assert hint.startswith("this CPU has AVX-512, which OPENBLAS_CORETYPE=Haswell leaves unused")
    assert "env -u OPENBLAS_CORETYPE" in hint
    assert threads.blas_hint(str(avx2)) is None, "no AVX-512 to use"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert threads.blas_hint(str(avx512)) is None, "OpenBLAS chose for itself"
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    loaded.architecture = "SkylakeX"
    assert threads.blas_hint(str(avx512)) is None, "pinned to the AVX-512 kernels already"
