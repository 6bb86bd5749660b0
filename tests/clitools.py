"""Helpers the CLI tests share: run `largekernel` in-process, and the environment for subprocesses."""
import contextlib
import io
import os

from largekernel.cli import main


def run_cli(argv) -> tuple[int, str, str]:
    """`largekernel ARGV` in-process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def sub_env() -> dict:
    """Single-threaded torch for CLI subprocesses (two 2-thread processes on 2 cores are 5-10x slower),
    never inside a torchrun group."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env
