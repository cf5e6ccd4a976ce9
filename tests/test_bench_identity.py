"""A run's numbers follow its inputs: a checkpoint retrained in place or a corrected classes.txt gives a
new run (its cells computed anew, a line naming the input); a resume on unchanged inputs hashes and
computes nothing; a store whose bench stopped early reports what is missing (exit 3); a killed writer's
hidden temp file is removed by the next report."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from camzoo.bench import fingerprint
from camzoo.bench.config import resolve_config
from camzoo.bench.missing import INCOMPLETE_EXIT, find_missing
from camzoo.bench.plan import build_plan
from camzoo.bench.record import RunRecord
from camzoo.bench.report import write_report
from camzoo.bench.runner import BenchRunner
from camzoo.bench.store import CellKey, ResultsStore
from helpers import cli, tiny_config, write_folder

FACTORY = '''
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build(num_classes=4):
    return Tiny(num_classes)
'''

CONFIG = """
preset = "custom"
device = "cpu"
methods = ["gradcam", "random", "oracle"]

[[datasets]]
name = "annotated"
root = "{root}"
image_size = 16

[[models]]
name = "{module}:build"
checkpoints = ["{a}", "{b}"]

[eval]
images = 8
batch_size = 8
game_images = 4
deletion_steps = 3
substrates = []
grid_games = []
sensitivity = []
gallery_images = 1
"""


def weights(path: Path, seed: int) -> Path:
    """The tiny factory model's state dict after ``torch.manual_seed(seed)``: a "training run"."""
    from identity_tinynet import build

    torch.manual_seed(seed)
    torch.save(build().state_dict(), path)
    return path


def backdate(*roots: Path) -> None:
    """Files written in the last seconds are hashed again on the next run (their next change could keep
    the timestamp); these inputs are older, as a user's usually are."""
    past = time.time() - 60
    for root in roots:
        for path in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
            os.utime(path, (past, past))


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """An annotated folder, the factory module and two checkpoints of it, the config naming them."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "identity_tinynet.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "identity_tinynet", raising=False)  # another test's copy
    root = write_folder(tmp_path / "photos", per_class=2, side=32)
    a, b = weights(tmp_path / "a.pt", 0), weights(tmp_path / "b.pt", 1)
    config = tmp_path / "bench.toml"
    config.write_text(CONFIG.format(root=root, module="identity_tinynet", a=a, b=b), encoding="utf-8")
    backdate(root, code, a, b)
    return tmp_path


def plan_of(base: Path, out: Path | None = None):
    return build_plan(resolve_config(None, base / "bench.toml"), cache_dir=out)


def run(base: Path, out: Path) -> tuple[str, list[str]]:
    """The bench of ``base``'s config into ``out`` (no report): its run id and what it said."""
    out.mkdir(exist_ok=True)
    said: list[str] = []
    plan = plan_of(base, out)
    BenchRunner(plan, out, progress=False, echo=said.append).run()
    return plan.run_id, said


def finished(out: Path, run_id: str) -> dict[CellKey, str]:
    with ResultsStore(out) as store:
        return store.finish_times(run_id)


def test_resume_on_unchanged_inputs_hashes_and_computes_nothing(inputs):
    out = inputs / "out"
    first, _ = run(inputs, out)
    cells = finished(out, first)
    assert len(cells) == len(plan_of(inputs).cell_keys())
    before = (fingerprint.COUNTS.hashed, fingerprint.COUNTS.reused)
    again, said = run(inputs, out)
    assert again == first and not said
    assert fingerprint.COUNTS.hashed == before[0], "a resume on unchanged files must not read them again"
    assert fingerprint.COUNTS.reused - before[1] >= 2 + 8  # the checkpoints and the images, from the cache
    assert finished(out, first) == cells, "nothing is computed again"


def test_a_checkpoint_retrained_in_place_gives_new_cells_and_a_line_naming_it(inputs):
    out = inputs / "out"
    first, _ = run(inputs, out)
    b = inputs / "b.pt"
    original, stamp = b.read_bytes(), b.stat()
    weights(b, 7)  # retrained in place: the same size, other weights, and even the old timestamp
    os.utime(b, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert b.stat().st_size == stamp.st_size and b.read_bytes() != original
    stored = cli("report", out, "--format", "md")  # the stored run is reported as it is, saying its file changed
    assert stored.exit_code == 0 and f"run `{first}`" in stored.output, stored.output
    assert f"Inputs changed since this run: checkpoint {b}: its file now holds other content" in stored.output
    assert "a.pt:" not in stored.output
    result = cli("bench", "--config", inputs / "bench.toml", "--out", out, "--no-progress", "--no-html")
    assert result.exit_code == 0, result.output
    second = re.search(r"run (\w{12}), device", result.output).group(1)
    assert second != first
    changed = [line for line in result.output.splitlines() if "inputs changed" in line]
    assert len(changed) == 1 and f"checkpoint {b}: other content" in changed[0] and first in changed[0], result.output
    assert "a.pt" not in changed[0], "only the input that changed is named"
    assert len(finished(out, second)) == len(finished(out, first)), "every cell of the new run was computed"
    with ResultsStore(out) as store:
        old, new = ({row["seed"]: row["value"] for row in store.results(run) if row["metric"] == "deletion"
                     and row["method"] == "gradcam"} for run in (first, second))
    assert old[0] == new[0] and old[1] != new[1], "the new run scores the new weights; a.pt's numbers stay"
    assert f"run `{second}`" in (out / "summary.md").read_text(encoding="utf-8")
    # the old weights back: the first run's cells are its numbers again; nothing is computed, it is reported
    b.write_bytes(original)
    third, said = run(inputs, out)
    assert third == first and not said
    report = cli("report", out, "--format", "md")
    assert report.exit_code == 0 and f"run `{first}`" in report.output, report.output


def test_a_corrected_classes_txt_gives_new_cells_and_a_line_naming_it(inputs):
    out = inputs / "out"
    first, _ = run(inputs, out)
    (inputs / "photos" / "classes.txt").write_text("ant 3\nbee 2\ncat 1\ndog 0\n", encoding="utf-8")
    second, said = run(inputs, out)
    assert second != first and len(said) == 1, said
    assert "dataset annotated test labels and class names (class folders, classes.txt or class_index): other content" \
        in said[0] and "image files" not in said[0] and "checkpoint" not in said[0], said
    assert len(finished(out, second)) == len(finished(out, first))
    with ResultsStore(out) as store:
        gallery = CellKey("annotated", "-", "-", "-", -1, "gallery")
        names, folders = {}, {}
        for run_id in (first, second):
            names[run_id] = list(store.array(run_id, gallery, "class_names"))
            folders[run_id] = sorted(names[run_id][k] for k in store.array(run_id, gallery, "eval_labels"))
    assert names[first] == ["ant", "bee", "cat", "dog"] and names[second] == ["dog", "cat", "bee", "ant"]
    assert folders[first] == folders[second], "the same images, each now labelled with its folder's new index"


def narrower_first_box(base: Path) -> None:
    """boxes.csv with its first box one pixel narrower."""
    lines = (base / "photos" / "boxes.csv").read_text().splitlines()
    name, x0, y0, x1, y1 = lines[1].split(",")
    lines[1] = ",".join([name, x0, y0, str(int(x1) - 1), y1])
    (base / "photos" / "boxes.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, named", [
    (narrower_first_box, "boxes (boxes.csv)"),
    (lambda base: (base / "photos" / "masks" / "bee" / "bee0.png").write_bytes(
        (base / "photos" / "masks" / "ant" / "ant0.png").read_bytes()), "mask files (masks/)"),
    (lambda base: (base / "code" / "identity_tinynet.py").write_text(FACTORY.replace("padding=1", "padding=2")),
     "model code identity_tinynet"),
])
def test_every_input_that_changes_a_number_changes_the_run(inputs, edit, named):
    before = plan_of(inputs)
    edit(inputs)
    after = plan_of(inputs)
    assert after.run_id != before.run_id and after.config_hash == before.config_hash
    changed = fingerprint.changed_inputs(before.inputs, after.inputs)
    assert len(changed) == 1 and named in changed[0], changed


def test_generated_datasets_keep_the_config_run_id(tmp_path):
    plan = build_plan(resolve_config(None, tiny_config(tmp_path)))
    assert plan.run_id == plan.config_hash and not plan.inputs


def test_a_store_stopped_after_one_of_two_models_reports_what_is_missing(inputs):
    out = inputs / "out"
    out.mkdir()
    plan = plan_of(inputs, out)
    runner = BenchRunner(plan, out, progress=False, echo=lambda line: None)
    runner.record_run()
    runner.run_models(plan.jobs[:1])  # what a bench killed after its first model leaves
    runner.close()
    result = cli("report", out, "--html", "--format", "md")
    assert result.exit_code == INCOMPLETE_EXIT, result.output
    last = result.output.strip().splitlines()[-1]
    assert f"run {plan.run_id} is incomplete" in last and "1 model(s) have no cell" in last and "(b.pt)" in last, last
    missing = len(plan.jobs[1].cell_keys) + sum(len(g.methods) for g in plan.stability)
    assert f"{missing} of {len(plan.cell_keys())} planned cells are missing" in last, last
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# camzoo benchmark\n\n> **Incomplete:** run ") and "(b.pt)" in summary.split("\n")[2]
    assert "is incomplete" in (out / "report.html").read_text(encoding="utf-8")
    BenchRunner(plan, out, progress=False, echo=lambda line: None).run()  # the rerun finishes it
    result = cli("report", out, "--format", "md")
    assert result.exit_code == 0 and "Incomplete" not in result.output, result.output


def test_an_older_store_without_its_plan_is_judged_from_its_config(tmp_path):
    config = resolve_config("quick", None, {"models": [{"checkpoints": ["x/a.pt", "x/b.pt"]}]})
    with ResultsStore(tmp_path) as store:
        store.record_run("old", config, {})  # no plan recorded: a store from before plans were kept
        for method in ("model", "gradcam", "random"):
            store.write_cell("old", CellKey("annotated", "a", "checkpoint", "default", 0, method), {"top1": (0.5, None)},
                             code_version="t", device="cpu")
        missing = find_missing(store, RunRecord.from_store(store), tmp_path)
    assert missing.inferred and missing.counts() == {"model": 1, "method": 2}
    assert "annotated/a/checkpoint/seed1 (b.pt)" in missing.line() and "judged from its config" in missing.line()


def test_the_latest_run_is_the_one_started_last_even_through_shards(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.record_run("first", {}, {})
        store.record_run("second", {}, {})
        store.record_run("first", {}, {})  # resumed: the report's run again
        assert store.latest_run_id() == "first"
    with ResultsStore(tmp_path / "shard") as shard:  # a later distributed start
        shard.record_run("third", {}, {}, planned=[CellKey("d", "b", "k", "v", 0, "m")])
        shard.write_cell("third", CellKey("d", "b", "k", "v", 0, "m"), {"top1": (1.0, None)}, code_version="t",
                         device="cpu")
    with ResultsStore(tmp_path) as store:
        store.merge_from(tmp_path / "shard" / "results.sqlite")
        assert store.latest_run_id() == "third" and store.planned_cells("third") == [CellKey("d", "b", "k", "v", 0, "m")]
        store.record_run("first", {}, {})
        store.merge_from(tmp_path / "shard" / "results.sqlite")  # merged again: an earlier start stays earlier
        assert store.latest_run_id() == "first"


def test_a_killed_writers_temp_file_is_removed_by_the_next_report(inputs, monkeypatch):
    out = inputs / "out"
    run(inputs, out)
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\nfrom camzoo.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    print(tmp, flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)")
        , str(out / "gallery_annotated_tiny.png")], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert left.is_file() and left.stat().st_size == 0 and left.name.startswith(".gallery_annotated_tiny.png.")
    created: list[str] = []
    real = tempfile.mkstemp

    def recording(*args, **kwargs):
        found = real(*args, **kwargs)
        created.append(found[1])
        return found

    monkeypatch.setattr(tempfile, "mkstemp", recording)
    files = write_report(out, html=True)
    monkeypatch.undo()
    assert not left.exists(), "the next report removes a killed writer's temp at once"
    assert not list(out.glob(".*.tmp"))
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
    temps = {Path(path).name for path in created if Path(path).parent == out}
    for name in files:  # every file the report writes goes through a temp the cleanup can judge
        pattern = re.compile(rf"^\.{re.escape(name)}\.{host}-{os.getpid()}\.[a-z0-9_]+\.tmp$")
        assert any(pattern.match(temp) for temp in temps), (name, sorted(temps))


def test_a_running_writers_temp_file_is_left_alone(tmp_path):
    from camzoo.io import atomic_path, remove_stale_temporaries

    with atomic_path(tmp_path / "summary.md") as tmp:
        tmp.write_text("half")
        past = time.time() - 3600
        os.utime(tmp, (past, past))
        assert remove_stale_temporaries(tmp_path) == [] and tmp.exists()
    assert (tmp_path / "summary.md").read_text() == "half"


def test_array_splits_are_fingerprinted_from_their_arrays():
    from camzoo.data import ArrayDataset

    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    split = ArrayDataset(images, torch.tensor([0, 1]), ["a", "b"], (0.5,) * 3, (0.5,) * 3)
    relabelled = ArrayDataset(images, torch.tensor([1, 0]), ["a", "b"], (0.5,) * 3, (0.5,) * 3)
    hashes = fingerprint.FileHashes()
    one, two = (fingerprint.split_parts(s, None, hashes) for s in (split, relabelled))
    assert one["images"] == two["images"] and one["labels"] != two["labels"]
    assert np.all([len(v) == 16 for v in one.values()])


def test_trained_models_follow_their_training_data(inputs):
    """A grid that trains on an on-disk folder: its train split is part of the run and of each model's
    directory, so changed training data never reuses weights trained on the old."""
    def plan():
        return build_plan(resolve_config(None, overrides={
            "kinds": ["baseline"], "backbones": ["resnet8"], "seeds": [0], "methods": ["gradcam"], "device": "cpu",
            "datasets": [{"name": "annotated", "root": str(inputs / "photos"), "image_size": 16, "options": {}}]}))

    before = plan()
    (inputs / "photos" / "classes.txt").write_text("ant 1\nbee 0\ncat 2\ndog 3\n", encoding="utf-8")
    after = plan()
    assert after.run_id != before.run_id
    assert after.jobs[0].source.checkpoint != before.jobs[0].source.checkpoint
    assert [what for what in after.inputs if after.inputs[what] != before.inputs[what]] == [
        "dataset annotated test labels", "dataset annotated train labels"]


def test_check_writes_no_hash_cache(inputs):
    out = inputs / "out"
    out.mkdir()
    result = cli("bench", "--config", inputs / "bench.toml", "--out", out, "--check", "--no-estimate")
    assert result.exit_code == 0 and "config OK" in result.output, result.output
    assert list(out.iterdir()) == []
