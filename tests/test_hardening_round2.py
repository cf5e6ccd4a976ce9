"""Issue 24: real folders, full disks, read-only stores and unusual models end in the right result or one line.

Why these tests: each bullet of the issue was seen by a new user; every test here fails on the code
before the fix (a traceback, a hang, a wrong message, or a silently wrong result).
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import camzoo
from camzoo.cli import CamzooGroup, main
from camzoo.inputs import FrameWarning, collect_image_files, load_image
from camzoo.models.checkpoint import save_model


def picture(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, gray: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = camzoo.build_model("baseline", "resnet8", num_classes=3, image_size=32)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


def explain(*args) -> click.testing.Result:
    return CliRunner().invoke(main, ["explain", *[a if isinstance(a, str) else os.fspath(a) for a in args]])


def rows(out: Path) -> list[str]:
    return (out / "manifest.csv").read_bytes().decode("utf-8", "surrogateescape").splitlines()[1:]


def test_out_inside_an_input_folder_is_never_read_and_out_equal_to_it_is_refused(tmp_path, checkpoint):
    for i in range(2):
        picture(tmp_path / "photos" / f"p{i}.png", seed=i)
    for _ in range(2):
        result = explain(tmp_path / "photos", "--checkpoint", checkpoint, "--out", tmp_path / "photos" / "maps")
        assert result.exit_code == 0 and "explained 2 of 2" in result.output, result.output
    assert not (tmp_path / "photos" / "maps" / "maps").exists() and len(rows(tmp_path / "photos" / "maps")) == 2
    refused = explain(tmp_path / "photos", "--checkpoint", checkpoint, "--out", tmp_path / "photos")
    assert refused.exit_code == 2 and "--out" in refused.output and "input folder" in refused.output


def test_a_recursive_glob_over_a_symlink_loop_ends_and_finds_each_file_once(tmp_path):
    picture(tmp_path / "dir" / "sub" / "a.png")
    os.symlink(".", tmp_path / "dir" / "loop")
    os.symlink("..", tmp_path / "dir" / "sub" / "up")
    signal.alarm(30)  # glob.glob took minutes here
    try:
        found = collect_image_files([f"{tmp_path}/dir/**/*.png"])
        walked = collect_image_files([tmp_path / "dir"])
    finally:
        signal.alarm(0)
    assert [p.resolve() for p in found] == [p.resolve() for p in walked] == [(tmp_path / "dir/sub/a.png").resolve()]


def test_a_file_name_that_is_not_utf8_is_explained_printed_and_listed(tmp_path, checkpoint):
    picture(tmp_path / "in" / "x.png")
    latin = os.fsdecode(os.fsencode(str(tmp_path / "in")) + b"/caf\xe9.png")
    os.rename(tmp_path / "in" / "x.png", latin)
    result = explain(tmp_path / "in", "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "caf\\xe9" in result.output  # shown escaped, not a UnicodeEncodeError
    raw = (tmp_path / "out" / "manifest.csv").read_bytes()
    assert raw.count(b"caf\xe9") == 2  # input and overlay columns keep the file system's exact bytes
    assert os.path.exists(os.fsdecode(os.fsencode(str(tmp_path / "out")) + b"/caf\xe9_gradcam.png"))


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_animated_and_multi_page_files_say_only_the_first_frame_is_explained(tmp_path, checkpoint, suffix):
    frames = [Image.new("RGB", (24, 16), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(tmp_path / f"anim{suffix}", save_all=True, append_images=frames[1:])
    with pytest.warns(FrameWarning, match="3 frames"):
        image = load_image(tmp_path / f"anim{suffix}")
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]  # the first frame
    result = explain(tmp_path / f"anim{suffix}", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert result.exit_code == 0 and "only the first is explained" in result.output


def fail_writes(monkeypatch, suffix: str, code: int = errno.ENOSPC) -> None:
    """Path.write_bytes of files ending in ``suffix`` fails with ``code``, as a full disk's write does."""
    real = pathlib.Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if f"{suffix}." in self.name or self.name.endswith(suffix):  # the temp file ".a.npy.x1y2.tmp" too
            raise OSError(code, os.strerror(code))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def test_save_maps_on_a_full_disk_names_the_file_and_the_cause_and_keeps_the_manifest(tmp_path, checkpoint, monkeypatch):
    picture(tmp_path / "a.png")
    fail_writes(monkeypatch, ".npy")
    result = explain(tmp_path / "a.png", "--checkpoint", checkpoint, "--save-maps", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert "a_gradcam.npy" in line and "no space left" in line and "rerun" in line
    assert (tmp_path / "o" / "manifest.csv").is_file() and not list((tmp_path / "o").glob(".*.tmp"))


def test_a_checkpoint_save_on_a_full_disk_keeps_the_finished_file(tmp_path, monkeypatch):
    model = camzoo.build_model("baseline", "resnet8", num_classes=3, image_size=32)
    path = save_model(model, tmp_path / "model.pt")
    before = path.read_bytes()
    fail_writes(monkeypatch, ".pt")
    with pytest.raises(OSError) as caught:
        save_model(model, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    assert torch.load(path, weights_only=True)["camzoo_version"] == camzoo.__version__  # and it says who wrote it


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


def read_only(monkeypatch) -> None:
    """What a read-only mount answers to the store's write probe (root ignores chmod, so it is simulated)."""
    import camzoo.bench.store as store_module

    monkeypatch.setattr(store_module, "write_problem", lambda directory, path: OSError(
        errno.EROFS, f"{os.strerror(errno.EROFS)}: read it (camzoo report DIR --out ELSEWHERE), not written", str(path)))


def test_a_store_in_a_read_only_place_is_read_and_writing_says_read_only(tmp_path, monkeypatch):
    from camzoo.bench.store import CellKey, ResultsStore

    with ResultsStore(tmp_path) as store:
        store.record_run("r1", {"preset": "x"}, {})
        store.write_cell("r1", CellKey("d", "b", "k", "v", 0, "gradcam"), {"m": (0.25, np.arange(3.0))},
                         code_version="t", device="cpu")
    read_only(monkeypatch)
    with ResultsStore(tmp_path) as store:
        assert store.read_only and [r["value"] for r in store.results("r1")] == [0.25]
        with pytest.raises(OSError, match="Read-only") as caught:
            store.record_run("r2", {}, {})
        assert caught.value.errno == errno.EROFS
    with pytest.raises(OSError, match="Read-only"):
        ResultsStore(tmp_path / "new")  # nothing to read, and nothing may be created


def test_camzoo_report_of_a_read_only_store_says_so_and_writes_elsewhere_with_out(tiny_bench_run, tmp_path_factory,
                                                                                  monkeypatch):
    run = tiny_bench_run
    read_only(monkeypatch)
    refused = CliRunner().invoke(main, ["report", str(run)])
    assert refused.exit_code == 1 and "read-only" in refused.output.lower() and "--out" in refused.output
    assert "not a camzoo results store" not in refused.output
    elsewhere = tmp_path_factory.mktemp("tables")
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(elsewhere), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "summary.csv").read_text() == (run / "summary.csv").read_text()
    assert len(camzoo.bench.load(run).long) > 0


class NoCfg(torch.nn.Module):
    def __init__(self, outputs: int = 3, squeeze: bool = False) -> None:
        super().__init__()
        self.conv, self.fc, self.squeeze = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, outputs), squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.conv(x).relu().mean((2, 3)))
        return logits.squeeze() if self.squeeze else logits


def test_a_meta_model_a_squeezing_model_and_a_url_get_the_right_result_or_the_right_cause():
    with torch.device("meta"):
        meta = NoCfg()
    with pytest.raises(ValueError, match="'meta' device"):
        camzoo.explain(meta, torch.randn(1, 3, 16, 16))
    torch.manual_seed(0)
    plain, x = NoCfg().eval(), torch.randn(1, 3, 16, 16)
    squeezing = NoCfg(squeeze=True).eval()
    squeezing.load_state_dict(plain.state_dict())
    for method in ("gradcam", "captum:Saliency"):
        a, b = camzoo.explain(plain, x, method=method), camzoo.explain(squeezing, x, method=method)
        assert torch.equal(a.targets, b.targets) and torch.allclose(a.maps, b.maps) and torch.allclose(a.scores, b.scores)
    with pytest.raises(ValueError, match="http://example.com/a.jpg.*URL"):
        camzoo.explain(plain, "http://example.com/a.jpg")


def test_a_one_channel_timm_model_explains_a_grayscale_png_from_the_api_and_the_cli(tmp_path):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=3).eval()
    gray = picture(tmp_path / "gray.png", gray=True)
    result = camzoo.explain(model, gray, image_size=(30, 40))
    pixels = np.asarray(Image.open(gray), np.float32) / 255.0
    mean, std = np.mean(model.pretrained_cfg["mean"]), np.mean(model.pretrained_cfg["std"])
    assert tuple(result.inputs.shape) == (1, 1, 30, 40)
    assert np.allclose(result.inputs[0, 0].numpy(), (pixels - mean) / std, atol=1e-5)  # no resize: same pixels
    assert result.overlay(0).size == (40, 30)
    torch.save(model.state_dict(), tmp_path / "gray.pth")
    cli = explain(gray, "--model", "resnet10t", "--checkpoint", tmp_path / "gray.pth", "--image-size", "32",
                  "--out", tmp_path / "o")
    assert cli.exit_code == 0, cli.output
    assert Image.open(tmp_path / "o" / "gray_gradcam.png").size == (40, 30)
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        camzoo.explain(model, torch.randn(1, 3, 32, 32))


def test_method_options_reach_captum_and_bad_ones_are_one_usage_line(tmp_path, checkpoint):
    from camzoo.cli.options import parse_options

    assert parse_options(["a=(3,4,4)", "b=16", "c=abs", "d='x'"], "--method-option") == {"a": (3, 4, 4), "b": 16, "c": "abs",
                                                                                        "d": "x"}
    image = picture(tmp_path / "a.png")
    base = [image, "--checkpoint", checkpoint, "--method", "captum:Occlusion", "--out", tmp_path / "o"]
    ok = explain(*base, "--method-option", "sliding_window_shapes=(3,4,4)", "--method-option", "strides=2")
    assert ok.exit_code == 0 and "explained 1 of 1" in ok.output, ok.output
    for extra, words in ((["--method-option", "window=(3,4,4)"], "window"), (["--method-option", "noequals"], "KEY=VALUE"),
                         ([], "--method-option")):
        bad = explain(*base, *extra)
        assert bad.exit_code == 2 and words in bad.output and "Traceback" not in bad.output, bad.output


def test_a_second_bench_on_one_out_waits_for_the_first(tmp_path):
    from camzoo.bench.lock import run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom camzoo.bench.lock import run_lock\n"
         "with run_lock(sys.argv[1], echo=print):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))",
         str(tmp_path), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said: list[str] = []
    start = time.monotonic()
    with run_lock(tmp_path, echo=said.append):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.5 and len(said) == 1 and "waiting" in said[0] and f"pid {holder.pid}" in said[0]
    with run_lock(tmp_path, echo=said.append):  # released: taken again at once, silently
        assert len(said) == 1


def test_camzoo_bench_takes_the_lock_of_its_out(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom camzoo.bench.lock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        bench = subprocess.Popen([sys.executable, "-m", "camzoo", "bench", "--out", str(tmp_path), "--no-progress"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert "waiting: camzoo bench" in bench.stdout.readline()
        finally:
            bench.send_signal(signal.SIGINT)
            assert bench.wait(timeout=60) == 130
    finally:
        holder.kill()
        holder.wait()


def test_folders_take_avif_list_dangling_links_and_pipes_and_skip_hidden_folders(tmp_path, checkpoint):
    folder = tmp_path / "in"
    picture(folder / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "b.avif")
    picture(folder / ".cache" / "hidden.png")
    os.symlink("gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    skipped: list = []
    files = collect_image_files([folder], skipped=skipped)
    assert [p.name for p in files] == ["a.png", "b.avif"]
    assert {p.name: why.split(",")[0] for p, why in skipped} == {
        "dangling.png": "is a symbolic link to 'gone.png'", "pipe.png": "is a named pipe"}
    signal.alarm(60)  # opening the pipe would block forever
    try:
        result = explain(folder, "--checkpoint", checkpoint, "--out", tmp_path / "o")
    finally:
        signal.alarm(0)
    assert result.exit_code == 1 and "explained 2 of 4" in result.output
    assert "dangling.png: is a symbolic link" in result.output and "pipe.png: is a named pipe" in result.output
    assert not any("hidden" in row for row in rows(tmp_path / "o"))
    named = explain(folder / "dangling.png", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert named.exit_code == 2 and "gone.png" in named.output and "does not exist" in named.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert collect_image_files([tmp_path / "in" / "b.avif"]) == [folder / "b.avif"]
