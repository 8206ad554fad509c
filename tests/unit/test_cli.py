"""The `slotsweep` console script (installed by `pip install -e .`) reaches every
`python -m slotsweep.<command>` entry point."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from slotsweep.cli import COMMANDS, setup_logging

SCRIPT = Path(sys.executable).with_name("slotsweep")


def slotsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_usage_lists_every_command_and_unknown_ones_are_refused():
    assert SCRIPT.is_file(), "the package's console script is not installed"
    listed = slotsweep()
    assert listed.returncode == 0
    for name, (module, _) in COMMANDS.items():
        assert f"  {name:<8} " in listed.stdout and f"(python -m {module})" in listed.stdout
    assert set(COMMANDS) == {"run", "train", "prepare", "report", "probe"}
    wrong = slotsweep("sweep", "quickstart")
    assert wrong.returncode == 2 and "unknown command 'sweep'" in wrong.stderr


def test_each_command_is_its_module(tmp_path):
    """The arguments go to the module's own parser: the same errors, word for word."""
    for args in (["run", str(tmp_path / "nosuch.yaml")],
                 ["train", str(tmp_path / "nosuch.yaml")],
                 ["probe", str(tmp_path / "nosuch")]):
        via_script = slotsweep(*args)
        via_module = subprocess.run(
            [sys.executable, "-m", COMMANDS[args[0]][0], *args[1:]],
            capture_output=True, text=True, timeout=120)
        assert via_script.returncode == via_module.returncode == 2, args
        assert via_script.stderr == via_module.stderr and "nosuch" in via_script.stderr
    for name in ("prepare", "report"):
        helped = slotsweep(name, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout, name


def test_version_from_the_script_and_python_m_slotsweep():
    """One version, the installed distribution's, wherever it is asked."""
    installed = importlib.metadata.version("slotsweep")
    for cmd in ([str(SCRIPT), "--version"], [str(SCRIPT), "-V"],
                [sys.executable, "-m", "slotsweep", "--version"],
                [sys.executable, "-m", "slotsweep.run", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout == f"slotsweep {installed}\n", cmd
    listed = subprocess.run([sys.executable, "-m", "slotsweep"], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout == slotsweep().stdout


def _actions(parser: argparse.ArgumentParser, where: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{where} {name}")
        else:
            yield where, action


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command):
    parser = importlib.import_module(COMMANDS[command][0]).parser()
    undocumented = [f"{where}: {'/'.join(a.option_strings) or a.dest}"
                    for where, a in _actions(parser, command)
                    if a.help in (None, "") and a.help is not argparse.SUPPRESS]
    assert not undocumented


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_imports_no_heavy_library(command):
    """`--help` answers before torch, Ray, MLflow or pydantic load (each costs 0.3-3 s;
    BENCHMARKS.md, "CLI start-up")."""
    module = COMMANDS[command][0]
    code = (f"import sys, runpy; sys.argv = ['x', '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = {'torch', 'ray', 'mlflow', 'pydantic', 'plotly', 'optuna', 'timm'}\n"
            "print('LOADED', sorted(heavy & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"


def test_quiet_and_verbose_set_the_slotsweep_loggers(capsys):
    """-q: warnings and errors only; -v: debug; the messages go to stderr, never stdout."""
    log = logging.getLogger("slotsweep.test")
    for verbosity, shown in ((-1, ["warning: w"]), (0, ["i", "warning: w"]),
                             (1, ["d", "i", "warning: w"]), (-2, [])):
        setup_logging(verbosity)
        log.debug("d")
        log.info("i")
        log.warning("w")
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines() == shown, verbosity


def test_the_shard_format_needs_no_torch():
    """The driver's checks and prepare read manifests before any training: the format
    module must import without torch or timm (seconds each)."""
    code = ("import sys, slotsweep.data.format; "
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_stuck_run_prints_its_threads_stacks_on_sigusr2(tmp_path):
    """`kill -USR2` makes a waiting driver print where it waits, and it goes on waiting
    (Tune keeps SIGUSR1 for itself: a graceful stop). Here it waits on a tracking server
    that accepts the connection and never answers (no Ray start)."""
    import os
    import signal
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(120)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "slotsweep.run", "quickstart", "--storage",
             str(tmp_path / "storage"), "--tracking-uri", f"http://127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = silent.accept()  # the driver is in its server check now
            os.kill(proc.pid, signal.SIGUSR2)
            out, err = proc.communicate(timeout=120)  # the check's own timeout ends it
            conn.close()
        finally:
            proc.kill()
    assert "Current thread" in err and "check_tracking_server" in err, err[-3000:]
    assert proc.returncode != -signal.SIGUSR2  # the signal did not end it
    assert "127.0.0.1" in err  # the server check's own error came after the stacks
