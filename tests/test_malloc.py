"""The allocator setting: mallopt through ctypes on glibc, opt-out by environment, CLI-only."""
import os
import subprocess
import sys

CODE = ("import largekernel, largekernel.malloc as m; before = m._done; "
        "ok = m.keep_freed_memory(); print(before, ok, m._done)")


def run(env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env).stdout.split()


def test_import_leaves_the_allocator_alone_and_the_call_takes_effect():
    assert run({}) == ["False", "True", "True"]


def test_opt_out():
    assert run({"LARGEKERNEL_MALLOC": "default"}) == ["False", "False", "False"]


def test_cli_sets_it_and_bench_reports_it():
    out = subprocess.run([sys.executable, "-c", "import largekernel.cli as c, largekernel.malloc as m; "
                          "c.main(['info', 'unireplknet_a']); print(m._done)"],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.stdout.strip().splitlines()[-1] == "True"
    from largekernel import malloc
    from largekernel.tools.bench import machine_info
    assert machine_info()["malloc"].startswith("keep_freed_memory" if malloc._done else "glibc default")
