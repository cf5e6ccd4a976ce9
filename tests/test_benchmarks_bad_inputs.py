"""benchmarks/bad_inputs.py at a tiny size: every bad input ends as a result or one clear line.

The test calls the script's main (what ``python benchmarks/bad_inputs.py`` runs) in this process:
the script starts its own child processes where a case needs one (the huge image's memory, the
full disk, Ctrl-C), each in a session of its own with SIGINT handled whatever this process inherited,
and ends each one's group when its case is done.
"""

from __future__ import annotations

import re

import pytest

OUTCOME = re.compile(r"^(?P<name>.+?)\s{2,}(?P<outcome>ok|error|SILENT|TRACEBACK|HANG|MEMORY)\b(?P<detail>.*)$")


@pytest.mark.slow
def test_bad_inputs_script_reports_no_traceback_no_silent_result_and_bounded_memory(benchmark_script, capsys):
    status = benchmark_script("bad_inputs").main(["--huge-side", "1200", "--max-gib", "4"])
    stdout, stderr = capsys.readouterr()
    assert "Traceback (most recent call last)" not in stderr, stderr
    table, summary = stdout.strip().rsplit("\n\n", 1)
    rows = [OUTCOME.match(line) for line in table.splitlines()]
    assert all(rows) and len(rows) >= 80, stdout
    names = {row.group("name") for row in rows}
    for case in ("symlink loop", "Latin-1", "animated GIF", "multi-page TIFF", "full disk", "read-only place",
                 "meta device", "squeezes", "1-channel timm model", "--method-option", "second bench",
                 ".avif", "dangling link", "Ctrl-C during start-up", "camzoo version", "URL", "--out inside the input"):
        assert any(case in name for name in names), f"issue 24's case {case!r} is not tried"
    for case in ("schema-1 tables, no meta table", 'schema_version "2.1"', "schema_version 3"):  # stores of other layouts
        assert any(case in name for name in names), f"the store layout {case!r} is not tried"
    wrong = [row.group(0) for row in rows if row.group("outcome") not in ("ok", "error")]
    assert not wrong, "\n".join(wrong)
    assert summary.endswith("0 SILENT, 0 TRACEBACK, 0 HANG, 0 MEMORY") and status == 0, summary
    huge = next(row for row in rows if "1200x1200 PNG" in row.group("name"))
    assert huge.group("outcome") == "ok" and "map (1, 1024, 1024)" in huge.group("detail")  # capped at max_size
