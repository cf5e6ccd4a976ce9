"""Feed camzoo bad and unusual inputs, as a new user would, and print a table: input -> outcome.

Outcomes: ``ok`` (it worked and a check of the result passed), ``error`` (one clear line: the
expected exception type, or a CLI exit code 1/2/130 without a traceback), ``SILENT`` (it "worked" but
the check shows the result is wrong, or the error blames the wrong cause), ``TRACEBACK`` (an internal
error, or a torch message of many lines), ``HANG`` (no answer within --hang-s seconds), ``MEMORY``
(the huge image took more than --max-gib). Exits 1 unless every row is ok/error. The full-disk cases
run in a child process whose file-size limit (RLIMIT_FSIZE) makes writes fail as on a full disk.
Every child process starts in a session of its own with SIGINT handled (``child``: launched with
SIGINT ignored, as under nohup, the Ctrl-C case would otherwise not stop its child), and its whole
group is killed when its case is done, however the case ends.

    python benchmarks/bad_inputs.py                   # with a 10000 x 10000 px image
    python benchmarks/bad_inputs.py --huge-side 1500  # quick (the test suite runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import camzoo
from camzoo.cli import main as cli
from camzoo.inputs import load_image
from camzoo.models.checkpoint import save_model
from camzoo.models.loading import load_any_model

CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError, IndexError, MemoryError, FloatingPointError)
HANG_S = 60


class Hang(BaseException):
    """Raised by the alarm when a case runs longer than HANG_S (a BaseException: nothing catches it)."""


@contextlib.contextmanager
def deadline(seconds: int):
    def ring(*_: Any) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class NoCfg(nn.Module):
    """A torchvision-like classifier: no pretrained_cfg, so pixel inputs run at their own size."""

    def __init__(self, outputs: int = 3, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel)
        self.fc = nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean((2, 3)))


def api(fn: Callable[[], Any], check: Callable[[Any], bool] | None = None, expect: str | None = None,
        errors: tuple[type[BaseException], ...] = CLEAR_ERRORS) -> tuple[str, str]:
    """Run a Python call; classify its outcome (``expect``: words the error must hold, or it blames
    the wrong cause: SILENT)."""
    try:
        with warnings.catch_warnings(), deadline(HANG_S):
            warnings.simplefilter("ignore")
            value = fn()
    except Hang:
        return "HANG", f"no answer within {HANG_S} s"
    except errors as err:
        text = str(err)
        if "\n" in text.strip() or len(text) > 400:
            return "TRACEBACK", f"{type(err).__name__} of {len(text)} chars / {text.count(chr(10)) + 1} lines"
        if expect is not None and expect not in text:
            return "SILENT", f"the error does not say {expect!r}: {text[:200]}"
        return "error", f"{type(err).__name__}: {text}"
    except Exception as err:  # anything else is an internal error a user would see as a traceback
        return "TRACEBACK", f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
    if check is not None and not check(value):
        return "SILENT", "the result failed its check"
    return "ok", ""


def command(args: list[Any], check: Callable[[Any], bool] | None = None, expect: str | None = None) -> tuple[str, str]:
    """Run a CLI command in-process; classify its outcome (``expect``: words its output must hold)."""
    try:
        with deadline(HANG_S):
            result = CliRunner().invoke(cli, [a if isinstance(a, (str, bytes)) else os.fspath(a) for a in args])
    except Hang:
        return "HANG", f"no answer within {HANG_S} s"
    last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    if expect is not None and expect not in result.output:
        return "SILENT", f"the output does not say {expect!r}: {last[:200]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit) or "Traceback" in result.output:
        return "TRACEBACK", f"{type(result.exception).__name__}: {str(result.exception)[:200]}"
    if result.exit_code != 0:
        if result.exit_code == 1 and "Usage:" in result.output:
            return "TRACEBACK", "a runtime failure printed a Usage banner"
        return "error", f"exit {result.exit_code}: {last}"
    if check is not None and not check(result):
        return "SILENT", f"exit 0 but the result failed its check: {last}"
    return "ok", last


def child_signals() -> None:
    """Between fork and exec of a child: SIGINT at Python's handler (exec makes it SIG_DFL, and the new
    interpreter then installs its KeyboardInterrupt handler) and SIGTERM at its default, even where this
    script was started with them ignored (an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def child(args: list[Any], **options: Any):
    """subprocess.Popen in a session of its own, signals set by ``child_signals``; when the block ends,
    the child's process group (it and whatever it started) is killed and the child reaped."""
    proc = subprocess.Popen([os.fspath(a) for a in args], start_new_session=True, preexec_fn=child_signals, **options)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run_child(args: list[Any], timeout: float | None = None, **options: Any) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True) through ``child``: a timeout kills the child's group."""
    with child(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options) as proc:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.wait(), out, err)


def picture(path: Path, size: tuple[int, int] = (60, 40), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


@contextlib.contextmanager
def bomb_limit(pixels: int):
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def huge_image_child(path: str, max_gib: float) -> None:
    """In a fresh process: explain one huge PNG with a model that declares no input size (so it runs
    at the image's own size, capped); print the map's size and the peak resident memory."""
    model = NoCfg().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = camzoo.explain(model, path)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{tuple(result.maps.shape)} {peak_gib:.2f}")


def huge_image_case(tmp: Path, side: int, max_gib: float) -> tuple[str, str]:
    path = tmp / "huge.png"
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    with bomb_limit(None):  # writing it is not the test; reading it (with PIL's limit on) is
        Image.fromarray(np.stack([np.broadcast_to(ramp, (side, side))] * 3, axis=2)).save(path, compress_level=1)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = run_child([sys.executable, __file__, "--huge-child", path], HANG_S * 5, text=True, env=env)
    except subprocess.TimeoutExpired:
        return "HANG", f"no answer within {HANG_S * 5} s"
    if proc.returncode != 0:
        return "TRACEBACK", proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    shape, peak = proc.stdout.split(") ")
    if float(peak) > max_gib:
        return "MEMORY", f"peak {float(peak):.2f} GiB > {max_gib} GiB"
    return "ok", f"map {shape}), peak RSS {float(peak):.2f} GiB (limit {max_gib} GiB)"


def cases(tmp: Path, huge_side: int, max_gib: float) -> list[tuple[str, tuple[str, str]]]:
    torch.manual_seed(0)
    plain = NoCfg().eval()
    named = camzoo.build_model("baseline", "resnet8", num_classes=3, class_names=["cat", "dog", "fox"], image_size=32).eval()
    ckpt = save_model(named, tmp / "model.pt")
    one_logit = NoCfg(outputs=1).eval()
    x = torch.randn(1, 3, 16, 16)

    gray16 = tmp / "gray16.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(gray16)
    turned = tmp / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(turned, exif=exif)
    good = picture(tmp / "good.png")
    truncated = tmp / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    text = tmp / "notes.jpg"
    text.write_text("not an image")
    state_other = tmp / "other.pth"
    torch.save(NoCfg().state_dict(), state_other)
    evil = tmp / "evil.pth"
    evil.write_bytes(pickle.dumps(os.system))  # unpickling it would import os.system
    existing = tmp / "taken.txt"
    existing.write_text("x")
    for name in ("a.png", "sub/a.png"):
        picture(tmp / "dupes" / name, seed=len(name))
    folder = tmp / "folder"
    for i in range(3):
        picture(folder / f"p{i}.png", seed=i)
    (folder / "broken.png").write_bytes(b"junk")
    dataset = tmp / "ds"
    for cls in ("a", "b"):
        picture(dataset / "train" / cls / "0.png", size=(16, 16))
    (dataset / "train" / "a" / "bad.png").write_bytes(b"junk")
    out = tmp / "out"

    def ex(img, **kw):
        return lambda: camzoo.explain(kw.pop("model", plain), img, **kw)

    rows = [
        ("explain: 0x0 uint8 array", api(ex(np.zeros((0, 0, 3), np.uint8)))),
        ("explain: float64 HxWx3 array", api(ex(np.zeros((8, 8, 3))))),
        ("explain: tensor with 4 channels", api(ex(torch.randn(1, 4, 8, 8)))),
        ("explain: tensor of NaN", api(ex(torch.full((3, 8, 8), float("nan"))))),
        ("explain: an int", api(ex(42))),
        ("explain: tensors 8x8 and 9x9", api(ex([torch.randn(3, 8, 8), torch.randn(3, 9, 9)]))),
        ("explain: tensors 8x8 and 9x9, image_size=16", api(ex([torch.randn(3, 8, 8), torch.randn(3, 9, 9)], image_size=16),
                                                            lambda r: r.maps.shape == (2, 16, 16))),
        ("explain: tensor 16x16 with image_size=24", api(ex(x, image_size=24), lambda r: r.maps.shape == (1, 24, 24))),
        ("explain: image_size=0", api(ex(x, image_size=0))),
        ("explain: max_size=-1", api(ex(x, max_size=-1))),
        ("explain: target='cat', model without class names", api(ex(x, target="cat"))),
        ("explain: target='dog', model with class names", api(ex(torch.randn(1, 3, 32, 32), model=named, target="dog"),
                                                             lambda r: r.targets.tolist() == [1])),
        ("explain: target=7 on 3 classes", api(ex(x, target=7))),
        ("explain: 2 targets for 3 images", api(ex(torch.randn(3, 3, 16, 16), target=[0, 1]))),
        ("explain: target=1.5", api(ex(x, target=1.5))),
        ("Explanation.label(5) of one image", api(lambda: camzoo.explain(plain, x).label(5))),
        ("explain: headless timm model (num_classes=0)", api(lambda: camzoo.explain(
            __import__("timm").create_model("resnet10t", pretrained=False, num_classes=0), torch.randn(1, 3, 32, 32)))),
        ("explain: one-logit model (score = sigmoid)", api(ex(x, model=one_logit), lambda r: torch.allclose(
            r.scores, torch.sigmoid(one_logit(x)[:, 0].detach())))),
        ("explain: model that cannot run at 2x2 px", api(ex(torch.randn(1, 3, 2, 2), model=NoCfg(kernel=5)))),
        ("explain: unknown method", api(ex(x, method="scorecam"))),
        ("explain: unknown layer", api(ex(x, layer="conv9"))),
        ("load: 16-bit grayscale PNG at half scale", api(lambda: load_image(gray16), lambda im: np.asarray(im).max() == 128)),
        ("load: JPEG with EXIF 'rotate 90'", api(lambda: load_image(turned), lambda im: im.size == (20, 40))),
        ("load: truncated PNG", api(lambda: load_image(truncated))),
        ("load: empty file", api(lambda: load_image(empty))),
        ("load: text file named .jpg", api(lambda: load_image(text))),
        ("load: missing file", api(lambda: load_image(tmp / "missing.png"))),
        ("load: over PIL's decompression-bomb limit", api(lambda: _with_limit(load_image, good, 500))),
        (f"explain: {huge_side}x{huge_side} PNG, a model without an input size", huge_image_case(tmp, huge_side, max_gib)),
        ("model: corrupt checkpoint", api(lambda: load_any_model("resnet10t", empty))),
        ("model: pickle that runs code", api(lambda: load_any_model("resnet10t", evil))),
        ("model: weights of another architecture", api(lambda: load_any_model("resnet10t", state_other))),
        ("model: num_classes=0", api(lambda: load_any_model("resnet10t", None, 0))),
        ("model: camzoo checkpoint + another --model", api(lambda: load_any_model("resnet18", ckpt))),
        ("model: unknown torchvision name", api(lambda: load_any_model("torchvision:resnet1", None))),
        ("cli: explain a.png sub/a.png (same name)", command(["explain", tmp / "dupes", "--checkpoint", ckpt, "--out", out / "d"],
                                                             lambda r: len(list((out / "d").rglob("*.png"))) == 2)),
        ("cli: --target 0 --target 1 for 3 images", command(["explain", folder / "p0.png", folder / "p1.png", folder / "p2.png",
                                                             "--checkpoint", ckpt, "--target", "0", "--target", "1",
                                                             "--out", out])),
        ("cli: --target wolf (not a class)", command(["explain", good, "--checkpoint", ckpt, "--target", "wolf", "--out", out])),
        ("cli: --num-classes 0", command(["explain", good, "--model", "resnet10t", "--num-classes", "0", "--out", out])),
        ("cli: --model resnet18 + resnet8 checkpoint", command(["explain", good, "--model", "resnet18", "--checkpoint", ckpt,
                                                               "--out", out])),
        ("cli: --image-size 0", command(["explain", good, "--checkpoint", ckpt, "--image-size", "0", "--out", out])),
        ("cli: --out is a file", command(["explain", good, "--checkpoint", ckpt, "--out", existing])),
        ("cli: --out under a file", command(["explain", good, "--checkpoint", ckpt, "--out", existing / "sub"])),
        ("cli: --device gpu", command(["explain", good, "--checkpoint", ckpt, "--device", "gpu", "--out", out])),
        ("cli: --layer fc (not a feature map)", command(["explain", good, "--checkpoint", ckpt, "--layer", "fc", "--out", out])),
        ("cli: --method oracle (needs ground truth)", command(["explain", good, "--checkpoint", ckpt, "--method", "oracle",
                                                              "--out", out])),
        ("cli: folder with one unreadable image", command(["explain", folder, "--checkpoint", ckpt, "--out", out / "f"])),
        ("cli: missing input path", command(["explain", tmp / "nope.png", "--checkpoint", ckpt, "--out", out])),
        ("cli: preview --out is a directory", command(["datasets", "preview", "shapes", "--out", tmp])),
        ("cli: preview of a folder with an unreadable image", command(["datasets", "preview", "imagefolder", "--root", dataset,
                                                                       "--out", out / "p.png"])),
        ("cli: train --device gpu", command(["train", "--kind", "baseline", "--device", "gpu", "--out", out / "t"])),
        ("cli: train --device cuda:9", command(["train", "--kind", "baseline", "--device", "cuda:9", "--out", out / "t"])),
        ("cli: explain with a torchvision: model", command(
            ["explain", good, "--model", "torchvision:resnet18", "--image-size", "32", "--out", out / "tv"],
            lambda r: (out / "tv" / "good_gradcam.png").is_file())),
    ]
    return rows + round_two(tmp, ckpt, plain) + stale_results(tmp) + photo_folder_cases(tmp) + own_models(tmp)


def full_disk_child(folder: str) -> None:
    """In a fresh process whose files may not grow past 64 KiB (writes then fail as on a full disk):
    run both full-disk cases and print each outcome as ``case<TAB>outcome<TAB>detail``."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    tmp = Path(folder)
    named = camzoo.build_model("baseline", "resnet8", num_classes=3, image_size=32).eval()
    old = save_model(named, tmp / "model.pt")  # before the limit: the finished file a failed save must keep
    photo = picture(tmp / "big" / "photo.png", size=(400, 300))
    wide = camzoo.build_model("baseline", "resnet20", num_classes=3, image_size=32).eval()
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    outcome = command(["explain", photo, "--checkpoint", old, "--save-maps", "--out", tmp / "maps"],
                      expect="cannot write")
    if outcome[0] == "error" and not (tmp / "maps" / "manifest.csv").is_file():
        outcome = ("SILENT", "the manifest of the stopped run is missing")
    print(f"maps\t{outcome[0]}\t{outcome[1]}")
    outcome = api(lambda: save_model(wide, old), expect="model.pt", errors=CLEAR_ERRORS + (OSError,))
    if load_any_model(None, old).config["backbone"] != "resnet8":
        outcome = ("SILENT", "the finished model.pt was damaged by the failed save")
    print(f"checkpoint\t{outcome[0]}\t{outcome[1]}")


def full_disk_cases(tmp: Path) -> dict[str, tuple[str, str]]:
    """{"maps": outcome, "checkpoint": outcome} of the two full-disk cases, run in one child process."""
    folder = tmp / "disk"
    folder.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = run_child([sys.executable, __file__, "--full-disk-child", folder], HANG_S * 3, text=True, env=env)
    except subprocess.TimeoutExpired:
        return dict.fromkeys(("maps", "checkpoint"), ("HANG", f"no answer within {HANG_S * 3} s"))
    found = dict(line.split("\t", 1) for line in proc.stdout.splitlines() if line.count("\t") == 2)
    failed = ("TRACEBACK", (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return {case: tuple(found[case].split("\t", 1)) if proc.returncode == 0 and case in found else failed
            for case in ("maps", "checkpoint")}


def _python_catches_sigint(pid: int, timeout: float = 30.0) -> None:
    """Wait until the process's interpreter handles SIGINT (``SigCgt`` in /proc; elsewhere: return at
    once). Before that, a Ctrl-C kills any Python program by the signal's default action: on a loaded
    machine one second was sometimes too early, and the case read an interpreter's start as camzoo's."""
    status, mask = Path(f"/proc/{pid}/status"), 1 << (signal.SIGINT - 1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return
        if int(line.split()[1], 16) & mask:
            return
        time.sleep(0.02)


def interrupted_start(tmp: Path) -> tuple[str, str]:
    """Ctrl-C early in `camzoo explain` (half a second after the interpreter handles it: while torch is
    imported): exit 130, no traceback."""
    with child([sys.executable, "-m", "camzoo", "explain", tmp / "good.png", "--model", "resnet10t", "--out",
                tmp / "int"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _python_catches_sigint(proc.pid)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            err = proc.communicate(timeout=HANG_S)[1]
        except subprocess.TimeoutExpired:
            return "HANG", f"still running {HANG_S} s after Ctrl-C"
    if "Traceback" in err or "Aborted!" in err:
        return "TRACEBACK", (err.strip().splitlines() or [""])[-1]
    return ("error", f"exit 130: {err.strip()[-100:]}") if proc.returncode == 130 else ("SILENT", f"exit {proc.returncode}")


def second_bench_waits(tmp: Path) -> tuple[str, str]:
    """A process holds the bench lock of a directory for 2 s; run_lock here must wait for it, saying so."""
    from camzoo.bench.lock import run_lock

    said: list[str] = []
    with child([sys.executable, "-c", "import sys, time; from camzoo.bench.lock import run_lock\n"
                "with run_lock(sys.argv[1], echo=lambda m: None):\n print('held', flush=True)\n time.sleep(2)",
                tmp / "bench"], stdout=subprocess.PIPE, text=True) as holder:
        holder.stdout.readline()
        start = time.monotonic()
        with deadline(HANG_S), run_lock(tmp / "bench", echo=said.append):
            waited = time.monotonic() - start
    if waited < 1.0 or not said or "waiting" not in said[0]:
        return "SILENT", f"did not wait for the running bench (waited {waited:.1f} s, said {said})"
    return "ok", f"waited {waited:.1f} s: {said[0][:100]}"


def read_only_store(tmp: Path) -> list[tuple[str, tuple[str, str]]]:
    """A store whose directory cannot be written (simulated: the write probe answers EROFS, as a
    read-only mount would): it loads, and a write says read-only (not "corrupt")."""
    import camzoo.bench.store as store_module
    from camzoo.bench.store import CellKey, ResultsStore

    directory = tmp / "store"
    with ResultsStore(directory) as store:
        store.record_run("r1", {"preset": "x"}, {})
        store.write_cell("r1", CellKey("d", "b", "k", "v", 0, "gradcam"), {"m": (0.5, np.ones(3))},
                         code_version="t", device="cpu")
    real = store_module.write_problem
    store_module.write_problem = lambda d, p: OSError(errno.EROFS, "Read-only file system: read it, do not write", str(p))
    try:
        read = api(lambda: ResultsStore(directory).results("r1"), lambda rows: len(rows) == 1 and rows[0]["value"] == 0.5)
        write = api(lambda: ResultsStore(directory).record_run("r2", {}, {}), expect="Read-only",
                    errors=CLEAR_ERRORS + (OSError,))
    finally:
        store_module.write_problem = real
    return [("store: results store in a read-only place, read", read), ("store: the same, written", write)]


def store_layouts(tmp: Path) -> list[tuple[str, tuple[str, str]]]:
    """A --out holding a store this camzoo cannot resume: schema-1 tables without a meta table (once
    taken for schema 2: the resumed bench died with sqlite3.OperationalError), a schema_version of
    "2.1" (once "invalid literal for int()"), a newer schema. Each: one line, naming what and what to do."""
    import sqlite3

    from camzoo.bench.store import CellKey, ResultsStore

    schema_1 = ("CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT, provenance TEXT, created_at TEXT);"
                "CREATE TABLE cells (run_id, dataset, backbone, kind, variant, seed, method, device, finished_at);"
                "CREATE TABLE results (run_id, dataset, backbone, kind, variant, seed, method, metric, value, "
                "per_image, config_hash, code_version, device, created_at);"
                "CREATE TABLE arrays (run_id, dataset, backbone, kind, variant, seed, method, name, data);")
    rows = []
    for name, version, expect in (("schema-1 tables, no meta table", None, "schema 1, written by an older camzoo"),
                                  ('schema_version "2.1"', "2.1", "schema_version '2.1'"),
                                  ("schema_version 3", "3", "written by a newer camzoo")):
        out = tmp / "layouts" / (version or "none")
        out.mkdir(parents=True)
        if version is None:
            with sqlite3.connect(out / "results.sqlite") as db:
                db.executescript(schema_1)
        else:
            with ResultsStore(out) as store:
                store.write_cell("r", CellKey("d", "b", "k", "v", 0, "gradcam"), {"m": (0.5, None)},
                                 code_version="t", device="cpu")
            with sqlite3.connect(out / "results.sqlite") as db:
                db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (version,))
        rows.append((f"store: --out holding {name}, write", api(
            lambda out=out: ResultsStore(out).write_cell("r", CellKey("d", "b", "k", "v", 1, "gradcam"), {"m": (0.5, None)},
                                                         code_version="t", device="cpu"), expect=expect)))
        rows.append((f"cli: report on {name}", command(["report", out], expect=expect)))
    return rows


def round_two(tmp: Path, ckpt: Path, plain: nn.Module) -> list[tuple[str, tuple[str, str]]]:
    """A new user on real folders, full disks and unusual models."""
    import timm

    photos = tmp / "photos"
    for i in range(3):
        picture(photos / f"p{i}.png", seed=i)
    first = command(["explain", photos, "--checkpoint", ckpt, "--out", photos / "maps"])
    again = command(["explain", photos, "--checkpoint", ckpt, "--out", photos / "maps"],
                    lambda r: not (photos / "maps" / "maps").exists() and "explained 3 of 3" in r.output)
    looped = tmp / "looped"
    picture(looped / "sub" / "a.png")
    os.symlink(".", looped / "loop")
    os.symlink("..", looped / "sub" / "up")
    latin = tmp / "latin"
    picture(latin / "x.png")
    os.rename(latin / "x.png", os.fsdecode(os.fsencode(str(latin)) + b"/caf\xe9.png"))
    frames = [Image.new("RGB", (24, 16), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp / "pages.tif", save_all=True, append_images=frames[1:])

    def warns_of_frames(path: Path) -> Callable[[], Any]:
        def run() -> Any:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                load_image(path)
            return caught
        return run

    with torch.device("meta"):
        meta = NoCfg()
    squeezer = Squeezer().eval()
    one_logit = NoCfg(outputs=1).eval()
    x = torch.randn(1, 3, 16, 16)
    gray_model = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=3).eval()
    torch.save(gray_model.state_dict(), tmp / "gray.pth")
    gray_png = tmp / "gray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40), np.uint8)).save(gray_png)
    odd = tmp / "odd"
    picture(odd / "a.png")
    picture(odd / ".hidden" / "h.png")
    os.symlink("gone.png", odd / "dangling.png")
    os.mkfifo(odd / "pipe.png")
    avifs = tmp / "avifs"
    avifs.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(avifs / "a.avif")
    gray_args = ["--model", "resnet10t", "--checkpoint", tmp / "gray.pth", "--image-size", "32"]
    full_disk = full_disk_cases(tmp)
    return [
        ("cli: --out inside the input folder, 1st run", first),
        ("cli: --out inside the input folder, 2nd run", again),
        ("cli: --out is the input folder", command(["explain", photos, "--checkpoint", ckpt, "--out", photos],
                                                   expect="input folder")),
        ("cli: quoted '**' glob over a symlink loop", command(["explain", f"{looped}/**/*.png", "--checkpoint", ckpt,
                                                               "--out", tmp / "lo"], lambda r: "explained 1 of 1" in r.output)),
        ("cli: a Latin-1 (non-UTF-8) file name", command(
            ["explain", latin, "--checkpoint", ckpt, "--out", tmp / "la"],
            lambda r: (tmp / "la" / "manifest.csv").read_bytes().count(b"caf\xe9") == 2)),
        ("load: animated GIF says only its first frame is explained", api(
            warns_of_frames(tmp / "anim.gif"), lambda w: any("3 frames" in str(m.message) for m in w))),
        ("load: multi-page TIFF says only its first page is explained", api(
            warns_of_frames(tmp / "pages.tif"), lambda w: any("3 frames" in str(m.message) for m in w))),
        ("cli: animated GIF", command(["explain", tmp / "anim.gif", "--checkpoint", ckpt, "--out", tmp / "gif"],
                                      expect="only the first is explained")),
        ("cli: explain --save-maps on a full disk", full_disk["maps"]),
        ("model: save_model over model.pt on a full disk", full_disk["checkpoint"]),
        *read_only_store(tmp),
        *store_layouts(tmp),
        ("explain: model on the meta device", api(ex_(meta, x), expect="meta")),
        ("explain: model that squeezes the batch axis, 1 image", api(ex_(squeezer, x), lambda r: int(r.targets[0]) == int(
            squeezer(x).argmax()))),
        ("explain: one-logit model that squeezes, 1 image", api(ex_(one_logit, x, model_wraps=True), lambda r: torch.allclose(
            r.scores, torch.sigmoid(one_logit(x)[:, 0].detach())))),
        ("explain: one-logit model that squeezes, 2 images", api(ex_(one_logit, torch.randn(2, 3, 16, 16), model_wraps=True),
                                                                 expect="one value per image")),
        ("explain: 1-channel timm model, grayscale PNG", api(ex_(gray_model, gray_png, image_size=32),
                                                             lambda r: tuple(r.inputs.shape) == (1, 1, 32, 32))),
        ("cli: explain with a 1-channel timm model", command(["explain", gray_png, *gray_args, "--out", tmp / "g1"],
                                                             lambda r: (tmp / "g1" / "gray_gradcam.png").is_file())),
        # strides=4: Occlusion runs one forward per window position, 16x fewer than at stride 1 (which
        # took over a minute on a loaded 2-core machine: slow by design, not a hang)
        ("cli: captum:Occlusion --method-option sliding_window_shapes=(3,4,4)", command(
            ["explain", tmp / "good.png", "--checkpoint", ckpt, "--method", "captum:Occlusion", "--method-option",
             "sliding_window_shapes=(3,4,4)", "--method-option", "strides=4", "--out", tmp / "occ"],
            lambda r: "explained 1 of 1" in r.output)),
        ("cli: captum:Occlusion without its option", command(
            ["explain", tmp / "good.png", "--checkpoint", ckpt, "--method", "captum:Occlusion", "--out", tmp / "occ"],
            expect="--method-option")),
        ("cli: --method-option nonsense=1", command(["explain", tmp / "good.png", "--checkpoint", ckpt, "--method",
                                                    "captum:Occlusion", "--method-option", "nonsense=1", "--out", tmp / "occ"],
                                                   expect="nonsense")),
        ("cli: --method-option without =", command(["explain", tmp / "good.png", "--checkpoint", ckpt, "--method-option",
                                                   "sliding", "--out", tmp / "occ"], expect="KEY=VALUE")),
        ("bench: a second bench on one --out waits for the first", second_bench_waits(tmp)),
        ("cli: a folder of .avif files", command(["explain", avifs, "--checkpoint", ckpt, "--out", tmp / "av"],
                                                 lambda r: "explained 1 of 1" in r.output)),
        ("cli: folder with a dangling link, a pipe, a hidden folder", command(
            ["explain", odd, "--checkpoint", ckpt, "--out", tmp / "od"], expect="dangling.png: is a symbolic link")),
        ("cli: ... and the hidden folder was not read", api(lambda: (tmp / "od" / "manifest.csv").read_text(),
                                                            lambda text: ".hidden" not in text and "a.png" in text)),
        ("cli: a named pipe given as the input", command(["explain", odd / "pipe.png", "--checkpoint", ckpt, "--out", tmp / "od"],
                                                         expect="named pipe")),
        ("cli: Ctrl-C during start-up", interrupted_start(tmp)),
        ("model: model.pt records the camzoo version", api(lambda: torch.load(ckpt, weights_only=True),
                                                           lambda c: c.get("camzoo_version") == camzoo.__version__)),
        ("explain: a URL string", api(ex_(plain, "http://example.com/a.jpg"), expect="http://example.com/a.jpg")),
    ]


def stale_results(tmp: Path) -> list[tuple[str, tuple[str, str]]]:
    """Results that must follow their inputs: a bench stopped after one of two models, then a checkpoint
    retrained in place and a corrected classes.txt, into the same --out; a report killed mid-write."""
    from camzoo.bench.config import resolve_config
    from camzoo.bench.plan import build_plan
    from camzoo.bench.runner import BenchRunner

    photos = tmp / "stale" / "photos"
    for label, name in enumerate(("ant", "bee")):
        for i in range(2):
            picture(photos / name / f"{i}.png", size=(32, 32), seed=10 * label + i)
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        checkpoints.append(save_model(camzoo.build_model("baseline", "resnet8", num_classes=2, image_size=32).eval(),
                                      tmp / "stale" / f"seed{seed}.pt"))
    config = tmp / "stale" / "bench.toml"
    config.write_text(f'preset = "custom"\ndevice = "cpu"\nmethods = ["gradcam", "random"]\n'
                      f'[[datasets]]\nname = "annotated"\nroot = "{photos}"\nimage_size = 32\n'
                      f'[[models]]\ncheckpoints = ["{checkpoints[0]}", "{checkpoints[1]}"]\n'
                      '[eval]\nimages = 4\nbatch_size = 4\ngame_images = 2\ndeletion_steps = 2\nsubstrates = []\n'
                      'grid_games = []\nsensitivity = []\ngallery_images = 1\n', encoding="utf-8")
    out = tmp / "stale" / "out"
    out.mkdir()
    plan = build_plan(resolve_config(None, config), cache_dir=out)
    runner = BenchRunner(plan, out, progress=False, echo=lambda line: None)
    runner.record_run()
    runner.run_models(plan.jobs[:1])  # what a bench killed after its first model leaves
    runner.close()
    bench = ["bench", "--config", config, "--out", out, "--no-progress", "--no-html"]
    rows = [("report: a store whose bench stopped after 1 of 2 models", command(
        ["report", out, "--format", "md"], expect="1 model(s) have no cell: annotated/seed0/checkpoint/seed1 (seed1.pt)"))]
    rows.append(("bench: the same command again finishes that run", command(
        bench, lambda r: "inputs changed" not in r.output and "Incomplete" not in r.output)))
    torch.manual_seed(7)  # retrained in place: the same file, the same size, other weights
    save_model(camzoo.build_model("baseline", "resnet8", num_classes=2, image_size=32).eval(), checkpoints[1])
    rows.append(("bench: a checkpoint retrained in place, same --out", command(
        bench, expect=f"inputs changed since run {plan.run_id}", check=lambda r: f"checkpoint {checkpoints[1]}: other "
        "content" in r.output and plan.run_id not in r.output.split("inputs changed")[0])))
    (photos / "classes.txt").write_text("ant 1\nbee 0\n", encoding="utf-8")
    rows.append(("bench: classes.txt corrected, same --out", command(
        bench, expect="dataset annotated test labels and class names")))
    killed = run_child([sys.executable, "-c", "import os, signal, sys\nfrom camzoo.io import atomic_path\n"
                        "with atomic_path(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)",
                        out / "gallery_annotated_seed0.png"], HANG_S)
    left = list(out.glob(".gallery_*.tmp"))
    rows.append(("report: a report killed while writing left a .gallery_*.tmp", command(
        ["report", out, "--format", "md"], lambda r: killed.returncode == -signal.SIGKILL and len(left) == 1
        and not list(out.glob(".*.tmp")))))
    return rows


def photo_folder_cases(tmp: Path) -> list[tuple[str, tuple[str, str]]]:
    """An annotated folder of scikit-image's bundled photos at 423 and 487 px (tests/helpers.py's
    ``photo_folder``): boxes on the far edge at 224 px, a class without boxes, a thin object at 8 px,
    ``--images 4``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import photo_folder

    from camzoo.data import load

    full = photo_folder(tmp / "photos_full")
    partial = photo_folder(tmp / "photos_partial", unboxed=("coffee",), thin=("rocket",))
    torch.manual_seed(0)
    six = save_model(camzoo.build_model("baseline", "resnet8", num_classes=6, image_size=32).eval(), tmp / "six.pt")
    bench = ["bench", "--checkpoint", six, "--methods", "gradcam", "--check", "--no-estimate", "--out", tmp / "pb"]
    rows = (full / "boxes.csv").read_text().splitlines()
    outside = tmp / "photos_outside"
    photo_folder(outside, per_class=1, horse=False)
    (outside / "boxes.csv").write_text("\n".join(rows[:1] + [rows[1].rsplit(",", 2)[0] + ",430,487"]) + "\n")
    return [
        ("datasets check --verify: boxes on a 423 px photo's far edge at 224", command(
            ["datasets", "check", "annotated", "--root", full, "--image-size", "224", "--verify"],
            lambda r: "annotated/test: all 12 items read" in r.output)),
        ("datasets preview: boxes on a 423 px photo's far edge at 224", command(
            ["datasets", "preview", "annotated", "--root", full, "--image-size", "224", "--split", "test",
             "--out", tmp / "pv.png"], lambda r: (tmp / "pv.png").stat().st_size > 0)),
        ("annotated: a box past its photo's edge names file and line", api(
            lambda: load("annotated", "test", root=outside), expect="boxes.csv' line 2 (astronaut/")),
        ("bench --check: a class without boxes is left out, counted", command(
            [*bench, "--data", partial, "--image-size", "224"],
            lambda r: "left out 2 of 12 images (coffee 2 of 2)" in r.output and "eval: 10 images" in r.output)),
        ("bench --check --image-size 8: a thin object names its files", command(
            [*bench, "--data", partial, "--image-size", "8"], expect="'rocket/rocket0.png' (boxes.csv line 6)")),
        ("bench --check --images 4: taken class by class", command(
            [*bench, "--data", full, "--images", "4"],
            lambda r: "4 of 12 test images, taken class by class" in r.output and " 2" not in r.output.split(
                "(seed 0): ")[-1].splitlines()[0])),
    ]


# Your own package: one network, returning its logits as users' models do (camzoo bench --model byo_nets:build).
BYO_NETS = """
from collections import OrderedDict
from dataclasses import dataclass
import torch
from torch import nn

@dataclass
class Out:
    logits: torch.Tensor

class Net(nn.Module):
    def __init__(self, num_classes=2, returns="dataclass", aux=0):
        super().__init__()
        self.returns, self.conv, self.fc = returns, nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, num_classes)
        if aux:
            self.aux = nn.Linear(8, aux)  # an auxiliary head registered after the classifier

    def forward(self, x):
        logits = self.fc(self.conv(x).relu().mean((2, 3)))
        return {"dataclass": Out(logits), "tuple": (logits, x), "tensor": logits,
                "modeloutput": OrderedDict(logits=logits), "named": {"scores": logits}}[self.returns]

def build(num_classes=2, returns="dataclass", aux=0):
    return Net(num_classes, returns, aux)

"""


def own_models(tmp: Path) -> list[tuple[str, tuple[str, str]]]:
    """Your own models in camzoo bench, read as camzoo explain reads them; one photo, one map (the
    other output shapes, --output, output = and grayscale models: tests/test_bench_byo.py)."""
    import pandas as pd
    import torchvision
    from skimage import data as skdata

    photos = tmp / "skimage"
    for cls, names in (("cat", ("chelsea", "coffee")), ("space", ("astronaut", "rocket"))):
        for name in names:
            (photos / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(getattr(skdata, name)()).resize((48, 48)).save(photos / cls / f"{name}.png")
    (tmp / "byo_nets.py").write_text(BYO_NETS, encoding="utf-8")
    sys.path.insert(0, str(tmp))
    sys.modules.pop("byo_nets", None)  # another caller in this process (a test) may hold its own byo_nets
    importlib.invalidate_caches()
    import byo_nets

    torch.save(byo_nets.build().state_dict(), tmp / "byo.pth")
    torch.save(byo_nets.build(aux=5).state_dict(), tmp / "aux.pth")
    (tmp / "light.toml").write_text("[eval]\ngame_images = 4\ndeletion_steps = 4\nsubstrates = []\n")
    run = ["bench", "--no-progress", "--no-html", "--data", photos, "--images", "4", "--image-size", "32",
           "--methods", "gradcam", "--config", tmp / "light.toml"]

    def scored(out: str) -> Callable[[Any], bool]:
        return lambda r: bool(np.isfinite(pd.read_csv(tmp / out / "summary.csv")["deletion_mean"]).all())

    named = tmp / "named.toml"  # a model returning {"scores": ...}, and no output = to say so
    named.write_text(f'methods = ["gradcam"]\n[[models]]\nname = "byo_nets:build"\ncheckpoints = ["{tmp / "byo.pth"}"]\n'
                     f'options = {{returns = "named"}}\n[[datasets]]\nname = "annotated"\nroot = "{photos}"\n'
                     'image_size = 32\n')

    tv = torchvision.models.resnet18(num_classes=2).eval()
    torch.save(tv.state_dict(), tmp / "tv.pth")
    cat = tmp / "cat.png"
    Image.fromarray(skdata.chelsea()).save(cat)  # 300 x 451

    def one_map() -> bool:
        api_map = camzoo.explain(tv, cat).map_at(0, (300, 451)).numpy()
        CliRunner().invoke(cli, ["explain", str(cat), "--model", "torchvision:resnet18", "--checkpoint", str(tmp / "tv.pth"),
                                 "--save-maps", "--out", str(tmp / "one")])
        return bool(np.abs(np.load(tmp / "one" / "cat_gradcam.npy").astype(np.float32) - api_map).max() < 2e-3)

    rows = [
        ("bench: --model pkg:factory returning a dataclass", command(
            [*run, "--model", "byo_nets:build", "--checkpoint", tmp / "byo.pth", "--out", tmp / "b1"], scored("b1"))),
        ("bench: a dict output without 'logits', no output =", command(
            ["bench", "--no-progress", "--no-html", "--config", named, "--out", tmp / "b2"], expect="set output")),
        ("model: an auxiliary head registered after the classifier", api(
            lambda: load_any_model("byo_nets:build", tmp / "aux.pth", factory_kwargs={"aux": 5}),
            lambda m: m.fc.out_features == 2)),
        ("explain: API and CLI on a torchvision classifier give one map", api(one_map, bool)),
    ]
    sys.path.remove(str(tmp))
    sys.modules.pop("byo_nets", None)
    return rows


class Squeezer(nn.Module):
    """A classifier whose forward ends in ``.squeeze()``: (C,) logits for one image."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = NoCfg()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).squeeze()


def ex_(model: nn.Module, img: Any, model_wraps: bool = False, **kw: Any) -> Callable[[], Any]:
    """camzoo.explain(model, img) as a case; ``model_wraps``: wrap the model in a squeezer first."""
    return lambda: camzoo.explain(_squeezed(model) if model_wraps else model, img, **kw)


def _squeezed(model: nn.Module) -> nn.Module:
    wrapper = Squeezer()
    wrapper.inner = model
    return wrapper.eval()


def _with_limit(fn: Callable[[Path], Any], path: Path, pixels: int) -> Any:
    with bomb_limit(pixels):
        return fn(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--huge-side", type=int, default=10000, help="Side of the huge PNG.")
    parser.add_argument("--max-gib", type=float, default=4.0, help="Peak memory allowed for the huge image.")
    parser.add_argument("--hang-s", type=int, default=HANG_S, help="Seconds after which a case counts as a hang.")
    parser.add_argument("--huge-child", help=argparse.SUPPRESS)
    parser.add_argument("--full-disk-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    globals()["HANG_S"] = args.hang_s
    if args.full_disk_child:
        full_disk_child(args.full_disk_child)
        return 0
    if args.huge_child:
        huge_image_child(args.huge_child, args.max_gib)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = cases(Path(tmp), args.huge_side, args.max_gib)
    width = max(len(name) for name, _ in rows)
    for name, (outcome, detail) in rows:
        print(f"{name:<{width}}  {outcome:<9}  {detail[:160]}")
    counts = {kind: sum(outcome == kind for _, (outcome, _) in rows)
              for kind in ("ok", "error", "SILENT", "TRACEBACK", "HANG", "MEMORY")}
    print(f"\n{len(rows)} inputs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0 if counts["SILENT"] == counts["TRACEBACK"] == counts["HANG"] == counts["MEMORY"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
