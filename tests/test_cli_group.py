"""The camzoo command group (camzoo.cli.CamzooGroup): what any command's failure looks like to a user.

A full disk or a read-only place is one line that names the file, Ctrl-C exits 130 without click's
"Aborted!", and ``camzoo`` imports no torch before it can catch Ctrl-C (issue 24)."""

from __future__ import annotations

import errno
import subprocess
import sys

from click.testing import CliRunner

from camzoo.cli import CamzooGroup


def test_any_command_reports_a_full_disk_or_read_only_place_in_one_line_and_ctrl_c_as_130():
    group = CamzooGroup()

    @group.command("full")
    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "results/quick/models/m.pt")

    @group.command("readonly")
    def readonly() -> None:
        raise OSError(errno.EROFS, "Read-only file system", "results/quick/summary.md")

    @group.command("other")
    def other() -> None:
        raise OSError(errno.ENOENT, "No such file")

    @group.command("stop")
    def stop() -> None:
        raise KeyboardInterrupt

    for name, words in (("full", "no space left"), ("readonly", "read-only")):
        result = CliRunner().invoke(group, [name])
        assert result.exit_code == 1 and words in result.output and "results/quick" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert isinstance(CliRunner().invoke(group, ["other"]).exception, FileNotFoundError)  # not mislabelled
    stopped = CliRunner().invoke(group, ["stop"])
    assert stopped.exit_code == 130 and "Aborted!" not in stopped.output


def test_the_command_imports_no_torch_before_it_can_catch_ctrl_c():
    code = "import sys, camzoo.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_ctrl_c_while_the_command_line_is_parsed_or_run_exits_130_from_the_program():
    """The program (camzoo.cli.run, the console script and python -m camzoo) exits 130 with one line
    whether Ctrl-C lands while click parses the options (click alone says "Aborted!", exit 1) or while
    the command runs, and skips the interpreter's teardown (which aborted when torch was busy)."""
    code = (
        "import sys, click, camzoo.cli as cli\n"
        "def stop(ctx, param, value):\n    raise KeyboardInterrupt\n"
        "@cli.main.command('parse')\n@click.option('--x', callback=stop, expose_value=False, is_eager=True, default='1')\n"
        "def parse():\n    pass\n"
        "@cli.main.command('work')\ndef work():\n    raise KeyboardInterrupt\n"
        "sys.argv = ['camzoo', sys.argv[1]]\ncli.run()\n"
    )
    for name in ("parse", "work"):
        result = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=120)
        assert result.returncode == 130, (name, result.returncode, result.stderr)
        assert "interrupted (Ctrl-C)" in result.stderr and "Aborted!" not in result.stderr
        assert "Traceback" not in result.stderr
