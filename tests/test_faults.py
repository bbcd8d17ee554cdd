"""Trust boundaries: a matrix of bad inputs and faults against every command.

Each case of the matrix sets up one fault in its own directory, runs the command in this
process and asserts exit code 2 (130 for Ctrl-C), exactly one ``error:`` line on stderr
naming the file or argument, no traceback, and that nothing under the case's directory was
written, changed or left behind. Faults that need another process (a read-only mount, a
full disk, a killed parent) run the console scripts in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gazenlq.bundle.manifest import MANIFEST, BundleError, bundle_file
from gazenlq.cli import evaluate, export, ingest, search, store, synth, train
from gazenlq.errors import GazeNLQError
from tests.conftest import script

# -- helpers ----------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and content time (symlinks as links)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            out[str(p.relative_to(root))] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


def replace(path: Path, data: bytes | str) -> None:
    """Write ``path`` anew (never through a hard link into the shared fixture)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a directory whose files are hard links (cheap; edit only via replace)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def edit_manifest(bundle: Path, change: Callable[[dict], object]) -> None:
    raw = json.loads((bundle / MANIFEST).read_text())
    change(raw)
    replace(bundle / MANIFEST, json.dumps(raw))


def run_cli(capsys, main, argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@dataclass
class Ctx:
    """One case's directory and the shared inputs it may copy."""

    root: Path
    bundle_src: Path
    stores_src: Path
    ckpt_src: Path
    val: Path

    def bundle(self) -> Path:
        return linked_copy(self.bundle_src, self.root / "bundle")

    def store(self) -> Path:
        src = sorted(self.stores_src.glob("*.zarr"))[0]
        lib = self.root / "lib"
        lib.mkdir(exist_ok=True)
        shutil.copytree(src, lib / src.name, ignore=shutil.ignore_patterns("cache", ".*"))
        return lib / src.name

    def ckpt(self) -> Path:
        return linked_copy(self.ckpt_src, self.root / "ckpt")

    def outside(self, name: str, data: bytes = b"x") -> Path:
        """A file beside (outside) the bundle."""
        p = self.root / "outside" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        return p


@pytest.fixture(scope="module")
def inputs(tiny_trained, tiny_bundle, tmp_path_factory):
    data, ckpt = tiny_trained
    lib = tmp_path_factory.mktemp("fault_stores")
    src = sorted(data.stores.glob("*.zarr"))[0]
    shutil.copytree(src, lib / src.name, ignore=shutil.ignore_patterns("cache", ".*"))
    return tiny_bundle, lib, ckpt, data.val


# -- the matrix -------------------------------------------------------------------------

Setup = Callable[[Ctx], list]
CASES: list[tuple[str, object, Setup, str]] = []


def case(name: str, main, needle: str) -> Callable[[Setup], Setup]:
    def add(setup: Setup) -> Setup:
        CASES.append((name, main, setup, needle))
        return setup
    return add


def _search(b: Path, ctx: Ctx) -> list:
    return [ctx.store(), "where is the cup", "--bundle", b, "--no-cache"]


def _check(b: Path, ctx: Ctx) -> list:
    return ["--check", b]


def _graph_file(name: str, file: str, *, listed: bool = True):
    def change(raw: dict) -> None:
        old = raw["graphs"]["fp32"][name]["file"]
        raw["graphs"]["fp32"][name]["file"] = file
        if listed:
            raw["files"][file] = raw["files"].pop(old)
    return change


def _bundle_faults() -> dict[str, tuple[Callable[[Path, Ctx], None], str]]:
    """Hostile or damaged bundles: name -> (damage, needle)."""
    def absolute(b, ctx):
        edit_manifest(b, _graph_file("video", str(ctx.outside("video.onnx"))))

    def dotdot(b, ctx):
        ctx.root.joinpath("video.onnx").write_bytes((b / "video.onnx").read_bytes())
        edit_manifest(b, _graph_file("video", "../video.onnx"))

    def graph_symlink(b, ctx):
        target = ctx.outside("video.onnx", (b / "video.onnx").read_bytes())
        (b / "video.onnx").unlink()
        (b / "video.onnx").symlink_to(target)

    def tokenizer_symlink(b, ctx):
        target = ctx.outside("tokenizer.json", (b / "tokenizer.json").read_bytes())
        (b / "tokenizer.json").unlink()
        (b / "tokenizer.json").symlink_to(target)

    def tokenizer_dotdot(b, ctx):
        ctx.root.joinpath("tokenizer.json").write_bytes((b / "tokenizer.json").read_bytes())
        edit_manifest(b, lambda r: r["text"].update(tokenizer="../tokenizer.json"))

    def tokenizer_unlisted(b, ctx):
        edit_manifest(b, lambda r: r["files"].pop("tokenizer.json"))

    def extra_absolute(b, ctx):
        p = ctx.outside("secret")
        edit_manifest(b, lambda r: r["files"].update({str(p): {"sha256": "0", "bytes": 1}}))

    def backslash(b, ctx):
        edit_manifest(b, lambda r: r["files"].update({"..\\secret": {"sha256": "0",
                                                                     "bytes": 1}}))

    def dir_symlink(b, ctx):
        ctx.outside("x.onnx")
        (b / "sub").symlink_to(ctx.root / "outside", target_is_directory=True)
        edit_manifest(b, lambda r: r["files"].update({"sub/x.onnx": {"sha256": "0",
                                                                     "bytes": 1}}))

    def empty_name(b, ctx):
        edit_manifest(b, _graph_file("text", ""))

    def nul_name(b, ctx):
        edit_manifest(b, _graph_file("text", "text\0.onnx"))

    def io_required(b, ctx):
        def change(raw):
            raw["graphs"]["fp32"]["video"]["inputs"][0]["name"] = "frames"
        edit_manifest(b, change)

    def io_extra(b, ctx):
        def change(raw):
            raw["graphs"]["fp32"]["ground"]["inputs"].append(
                {"name": "extra", "dtype": "float32", "shape": ["batch"]})
        edit_manifest(b, change)

    def tokenizer_altered(b, ctx):
        replace(b / "tokenizer.json", (b / "tokenizer.json").read_bytes().replace(b"[CLS]",
                                                                                   b"[CLZ]"))

    def graph_truncated(b, ctx):
        replace(b / "text.onnx", (b / "text.onnx").read_bytes()[:1000])

    def manifest_garbage(b, ctx):
        replace(b / MANIFEST, b"\x00\x01garbage")

    def manifest_missing(b, ctx):
        (b / MANIFEST).unlink()

    def newer(b, ctx):
        edit_manifest(b, lambda r: r.update(version=99))

    def entry_malformed(b, ctx):
        edit_manifest(b, lambda r: r["files"].update({"text.onnx": "abc"}))

    return {
        "graph-absolute-path": (absolute, "not a relative path"),
        "graph-dotdot": (dotdot, "'..'"),
        "graph-symlink-out": (graph_symlink, "leads out of the bundle"),
        "tokenizer-symlink-out": (tokenizer_symlink, "leads out of the bundle"),
        "tokenizer-dotdot": (tokenizer_dotdot, "'..'"),
        "tokenizer-unlisted": (tokenizer_unlisted, "tokenizer.json has no sha256"),
        "listed-absolute-path": (extra_absolute, "not a relative path"),
        "listed-backslash": (backslash, "not a relative path"),
        "listed-dir-symlink-out": (dir_symlink, "leads out of the bundle"),
        "graph-empty-name": (empty_name, "not a relative path"),
        "graph-nul-in-name": (nul_name, "not a relative path"),
        "io-required-name-missing": (io_required, "declares no input 'video'"),
        "io-name-not-in-graph": (io_extra, "ground.onnx"),
        "tokenizer-altered": (tokenizer_altered, "tokenizer.json: sha256"),
        "graph-truncated": (graph_truncated, "text.onnx: sha256"),
        "manifest-garbage": (manifest_garbage, "unreadable manifest"),
        "manifest-missing": (manifest_missing, "not a gazenlq bundle"),
        "manifest-newer": (newer, "newer than this gazenlq reads"),
        "manifest-entry-malformed": (entry_malformed, "malformed manifest"),
    }


for _name, (_damage, _needle) in _bundle_faults().items():
    for _cmd, _main, _argv in (("search", search.main, _search), ("check", export.main, _check)):
        def _setup(ctx, damage=_damage, argv=_argv):
            b = ctx.bundle()
            damage(b, ctx)
            return argv(b, ctx)
        case(f"{_cmd}:{_name}", _main, _needle)(_setup)


@case("search:bundle-is-a-file", search.main, "not a gazenlq bundle")
def _(ctx):
    (ctx.root / "b").write_text("x")
    return [ctx.store(), "q", "--bundle", ctx.root / "b", "--no-cache"]


def _nlq(ctx: Ctx, change: Callable[[dict], object] | None = None) -> Path:
    raw = json.loads(ctx.val.read_text())
    if change:
        change(raw)
    path = ctx.root / "q.json"
    path.write_text(json.dumps(raw))
    return path


def _query_file(data: bytes, name: str = "q.txt") -> Setup:
    def setup(ctx):
        (ctx.root / name).write_bytes(data)
        return [ctx.store(), "--queries", ctx.root / name, "--bundle", ctx.bundle_src,
                "--no-cache"]
    return setup


case("search:query-file-not-utf8", search.main, "not UTF-8 text (byte 0xff at offset 6)")(
    _query_file(b"where \xff is the cup\n"))
case("search:query-file-json-lines", search.main, "JSON Lines")(
    _query_file(b'{"query": "where", "clip_uid": "a"}\n{"query": "what", "clip_uid": "b"}\n',
                "q.jsonl"))
case("search:query-file-bad-json", search.main, "q.JSON: not valid JSON")(
    _query_file(b'{"videos": [', "q.JSON"))
case("search:query-file-empty", search.main, "no query")(_query_file(b"\n  \n"))
case("search:query-file-json-not-nlq", search.main, "missing 'videos'")(
    _query_file(b'{"questions": ["where"]}'))


@case("search:query-file-missing", search.main, "nope.txt: no such query file")
def _(ctx):
    return [ctx.store(), "--queries", ctx.root / "nope.txt", "--bundle", ctx.bundle_src]


@case("search:query-file-is-a-directory", search.main, "qdir: no such query file")
def _(ctx):
    (ctx.root / "qdir").mkdir()
    return [ctx.store(), "--queries", ctx.root / "qdir", "--bundle", ctx.bundle_src]


def _one_clip(store: Path, start_s: float, end_s: float) -> Callable[[dict], None]:
    """Keep the file's first clip, as a clip of ``store``'s video at ``[start_s, end_s]``."""
    def change(raw: dict) -> None:
        video = raw["videos"][0]
        video["video_uid"] = store.name.removesuffix(".zarr")
        video["clips"] = video["clips"][:1]
        clip = video["clips"][0]
        clip.update(video_start_sec=start_s, video_end_sec=end_s)
        raw["videos"] = [video]
    return change


@case("search:clip-outside-store", search.main, "lies outside the store's")
def _(ctx):
    s = ctx.store()
    q = _nlq(ctx, _one_clip(s, 1e5, 1e5 + 480))
    return [s.parent, "--queries", q, "--bundle", ctx.bundle_src, "--no-cache",
            "--submission", ctx.root / "sub.json"]


@case("search:clip-store-missing", search.main, ".zarr")
def _(ctx):
    s = ctx.store()
    uid = s.name.removesuffix(".zarr")
    q = _nlq(ctx, lambda r: r.update(videos=[v for v in r["videos"] if v["video_uid"] != uid]))
    return [s.parent, "--queries", q, "--bundle", ctx.bundle_src, "--no-cache"]


@case("search:submission-without-nlq", search.main, "--submission")
def _(ctx):
    return [ctx.store(), "q", "--bundle", ctx.bundle_src, "--submission", ctx.root / "s.json"]


@case("search:submission-dir-missing", search.main, "nodir")
def _(ctx):
    s = ctx.store()
    q = _nlq(ctx, _one_clip(s, 0.0, 20.0))
    return [s.parent, "--queries", q, "--bundle", ctx.bundle_src, "--no-cache",
            "--submission", ctx.root / "nodir" / "sub.json"]


@case("search:target-missing", search.main, "nowhere")
def _(ctx):
    return [ctx.root / "nowhere", "q", "--bundle", ctx.bundle_src]


@case("search:target-without-stores", search.main, "empty")
def _(ctx):
    (ctx.root / "empty").mkdir()
    return [ctx.root / "empty", "q", "--bundle", ctx.bundle_src]


@case("search:window-not-a-multiple", search.main, "--window 66")
def _(ctx):
    return [ctx.store(), "q", "--bundle", ctx.bundle_src, "--window", "66", "--overlap", "0",
            "--no-cache"]


@case("search:overlap-too-large", search.main, "--overlap")
def _(ctx):
    return [ctx.store(), "q", "--bundle", ctx.bundle_src, "--overlap", "99999", "--no-cache"]


@case("search:fp16-missing", search.main, "fp16")
def _(ctx):
    return [ctx.store(), "q", "--bundle", ctx.bundle_src, "--fp16", "--no-cache"]


@case("search:coarse-without-cache", search.main, "--mode 'coarse'")
def _(ctx):
    return [ctx.store(), "q", "--bundle", ctx.bundle_src, "--mode", "coarse", "--no-cache"]


@case("search:bundle-missing", search.main, "nobundle")
def _(ctx):
    return [ctx.store(), "q", "--bundle", ctx.root / "nobundle"]


@case("search:store-metadata-garbage", search.main, "zarr")
def _(ctx):
    s = ctx.store()
    replace(s / "zarr.json", b"{not json")
    return [s, "q", "--bundle", ctx.bundle_src, "--no-cache"]


@case("search:store-of-other-width", search.main, "the bundle expects")
def _(ctx):
    from gazenlq.store import StoreWriter

    with StoreWriter(ctx.root / "v.zarr", video_uid="v", video_dim=3, gaze_dim=2) as w:
        w.append(np.zeros((40, 3)), np.zeros((40, 2)))
    return [ctx.root / "v.zarr", "q", "--bundle", ctx.bundle_src, "--no-cache"]


@case("search:empty-query", search.main, "QUERY ' ': empty query")
def _(ctx):
    return [ctx.store(), "  ", "--bundle", ctx.bundle_src, "--no-cache"]


# gaze-store validate: damaged indexes (written by the module's search: see _indexed)

def _indexed(ctx: Ctx) -> tuple[Path, Path]:
    """A store copy with the index the shared store holds (see ``indexed_store``)."""
    s = ctx.store()
    shutil.copytree(ctx.stores_src / s.name / "cache", s / "cache")
    key = next(p for p in (s / "cache").iterdir() if p.is_dir())
    return s, key


@case("validate:cache-altered", store.main, "video_emb.npy: sha256 differs")
def _(ctx):
    s, key = _indexed(ctx)
    data = bytearray((key / "video_emb.npy").read_bytes())
    data[-7] ^= 0xFF
    replace(key / "video_emb.npy", bytes(data))
    return ["validate", s]


@case("validate:cache-truncated", store.main, "gaze_emb.npy: 1000 bytes")
def _(ctx):
    s, key = _indexed(ctx)
    replace(key / "gaze_emb.npy", (key / "gaze_emb.npy").read_bytes()[:1000])
    return ["validate", s]


@case("validate:cache-array-missing", store.main, "coarse_emb.npy: missing")
def _(ctx):
    s, key = _indexed(ctx)
    (key / "coarse_emb.npy").unlink()
    return ["validate", s]


@case("validate:cache-metadata-garbage", store.main, "zarr.json: unreadable")
def _(ctx):
    s, key = _indexed(ctx)
    replace(key / "zarr.json", b"]")
    return ["validate", s]


@case("validate:store-missing", store.main, "gone.zarr")
def _(ctx):
    return ["validate", ctx.root / "gone.zarr"]


@case("validate:chunk-missing", store.main, "video_features")
def _(ctx):
    s = ctx.store()
    chunk = sorted(p for p in (s / "video_features").rglob("*") if p.is_file()
                   and p.name != "zarr.json")[0]
    replace(chunk, chunk.read_bytes()[:10])
    return ["validate", s]


# gaze-export: damaged checkpoints (nothing may appear at -o)

def _ckpt_case(name: str, needle: str, damage: Callable[[Path], None]) -> None:
    def setup(ctx):
        c = ctx.ckpt()
        damage(c)
        return [c, "-o", ctx.root / "out", "--quiet"]
    case(f"export:{name}", export.main, needle)(setup)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    replace(path, bytes(data))


def _train_config_broken(c: Path) -> None:
    conf = json.loads((c / "config.json").read_text())
    conf["train_config"] = ["small"]
    replace(c / "config.json", json.dumps(conf))


_ckpt_case("safetensors-truncated", "model.safetensors: sha256 differs",
           lambda c: replace(c / "model.safetensors", (c / "model.safetensors").read_bytes()
                             [:5000]))
_ckpt_case("safetensors-altered", "model.safetensors: sha256 differs",
           lambda c: _flip(c / "model.safetensors"))
_ckpt_case("safetensors-missing", "model.safetensors: missing",
           lambda c: (c / "model.safetensors").unlink())
_ckpt_case("safetensors-garbage-unrecorded", "model.safetensors: not a readable safetensors",
           lambda c: (replace(c / "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"),
                      _unrecord(c)))
_ckpt_case("config-not-json", "config.json: not valid JSON",
           lambda c: replace(c / "config.json", b"{oops"))
_ckpt_case("config-not-utf8", "config.json: not valid JSON",
           lambda c: replace(c / "config.json", b"\xff\xfe{}"))
_ckpt_case("config-a-list", "config.json: not a gazenlq checkpoint",
           lambda c: replace(c / "config.json", b"[1, 2]"))
_ckpt_case("config-train-config-broken", "config.json: malformed train_config",
           _train_config_broken)
_ckpt_case("checkpoint-missing", "no config.json", lambda c: shutil.rmtree(c))


def _unrecord(c: Path) -> None:
    conf = json.loads((c / "config.json").read_text())
    conf.pop("files")
    replace(c / "config.json", json.dumps(conf))


# gaze-eval, gaze-ingest, gaze-synth

def _eval_case(name: str, needle: str, pred: bytes) -> None:
    def setup(ctx):
        (ctx.root / "p.json").write_bytes(pred)
        return [ctx.root / "p.json", ctx.val]
    case(f"eval:{name}", evaluate.main, needle)(setup)


_eval_case("predictions-not-utf8", "p.json: not UTF-8 text", b'{"version": "\xe9"}')
_eval_case("predictions-json-lines", "p.json: JSON Lines",
           b'{"clip_uid": "a"}\n{"clip_uid": "b"}\n')
_eval_case("predictions-empty-window-list", "predicted_times",
           json.dumps({"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": [
               {"clip_uid": "c", "annotation_uid": "a", "query_idx": 0,
                "predicted_times": []}]}).encode())
_eval_case("predictions-nan", "results[0].predicted_times[0][0]",
           b'{"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": [{"clip_uid":'
           b' "c", "annotation_uid": "a", "query_idx": 0, "predicted_times": [[NaN, 1]]}]}')


@case("eval:annotations-missing", evaluate.main, "gt.json: no such file")
def _(ctx):
    (ctx.root / "p.json").write_text(json.dumps({"version": "1.0", "challenge":
                                                 "ego4d_nlq_challenge", "results": []}))
    return [ctx.root / "p.json", ctx.root / "gt.json"]


@case("ingest:source-dir-missing", ingest.main, "nodir")
def _(ctx):
    return ["--video-source", f"egovlp={ctx.root / 'nodir'}", "--gaze-source",
            f"omnivore={ctx.root / 'nodir'}", "--out", ctx.root / "out"]


@case("ingest:source-spec", ingest.main, "NAME=DIR")
def _(ctx):
    return ["--video-source", "egovlp", "--gaze-source", "x=y", "--out", ctx.root / "out"]


@case("synth:out-is-a-file", synth.main, "ds")
def _(ctx):
    (ctx.root / "ds").write_text("x")
    return [ctx.root / "ds", "--sessions", "2"]


@case("train:data-missing", train.main, "nodata: not a directory")
def _(ctx):
    return [ctx.root / "nodata", "-o", ctx.root / "run"]


@case("train:unknown-variant", train.main, "--variants")
def _(ctx):
    return [ctx.stores_src, "-o", ctx.root / "run", "--variants", "bogus"]


@case("train:annotations-json-lines", train.main, "jl.json: JSON Lines")
def _(ctx):
    (ctx.root / "jl.json").write_text('{"a": 1}\n{"b": 2}\n')
    return [ctx.stores_src, "-o", ctx.root / "run", *(x for f in ("--train", "--val", "--test")
                                                       for x in (f, ctx.root / "jl.json"))]


@pytest.fixture(scope="module")
def indexed_store(inputs):
    """The shared store, searched once so that it holds an index for the bundle."""
    bundle, lib, _, _ = inputs
    from gazenlq.engine import SearchEngine

    SearchEngine.from_bundle(bundle).index(lib)
    return lib


@pytest.mark.parametrize("name,main,setup,needle", CASES, ids=[c[0] for c in CASES])
def test_fault_matrix(name, main, setup, needle, inputs, indexed_store, tmp_path, capsys):
    bundle, lib, ckpt, val = inputs
    ctx = Ctx(tmp_path, bundle, lib, ckpt, val)
    argv = setup(ctx)
    before = snapshot(tmp_path)
    shared = snapshot(lib)
    code, _, err = run_cli(capsys, main, argv)
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "the command wrote or left something behind"
    assert snapshot(lib) == shared


def test_the_matrix_is_large_and_covers_every_command():
    mains = {c[1] for c in CASES}
    assert len(CASES) >= 60
    assert mains == {search.main, export.main, store.main, evaluate.main, ingest.main,
                     synth.main, train.main}


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    from gazenlq.synth import dataset

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "generate", interrupted)
    code, _, err = run_cli(capsys, synth.main, [tmp_path / "ds", "--sessions", "2"])
    assert code == 130 and err == "interrupted; run again to resume\n"


# -- containment: generated hostile paths ------------------------------------------------

_PART = st.sampled_from(["..", ".", "", "a", "b.onnx", "out", "in", "\\", "..\\x", "c:",
                         "/", "~", "a\0"])


@pytest.fixture(scope="module")
def jail(tmp_path_factory) -> Path:
    """A bundle directory with a symlink leading out (``out``), one staying in (``in``)."""
    root = tmp_path_factory.mktemp("jail")
    bundle = root / "bundle"
    (bundle / "d").mkdir(parents=True)
    (bundle / "a").write_text("a")
    (root / "secret").mkdir()
    (bundle / "out").symlink_to(root / "secret", target_is_directory=True)
    (bundle / "in").symlink_to(bundle / "d", target_is_directory=True)
    return bundle


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(_PART, min_size=1, max_size=5), absolute=st.booleans())
def test_manifest_paths_never_resolve_outside_the_bundle(jail, parts, absolute):
    name = ("/" if absolute else "") + "/".join(parts)
    try:
        path = bundle_file(jail, name)
    except BundleError as exc:
        assert "\n" not in str(exc) and MANIFEST in str(exc)
        return
    assert path.resolve().is_relative_to(jail.resolve())
    assert not absolute and ".." not in name.split("/") and "\\" not in name


def test_inside_paths_and_symlinks_staying_inside_are_accepted(jail):
    assert bundle_file(jail, "a") == jail / "a"
    assert bundle_file(jail, "in/x.onnx") == jail / "in" / "x.onnx"
    with pytest.raises(BundleError, match="leads out of the bundle"):
        bundle_file(jail, "out/x")


def test_a_tensorrt_directory_leading_out_of_the_bundle_is_refused(jail):
    from gazenlq.bundle.trt import engine_dir, engine_path

    assert engine_path(jail, "video", "fp16") == jail / "tensorrt" / "fp16" / "video.engine"
    (jail / "tensorrt").symlink_to(jail / "out", target_is_directory=True)
    try:
        for where in (lambda: engine_path(jail, "video", "fp16"),
                      lambda: engine_dir(jail, "fp32")):
            with pytest.raises(BundleError, match="leads out of the bundle"):
                where()
    finally:
        (jail / "tensorrt").unlink()


def test_graph_output_order_in_the_manifest_does_not_mislabel_outputs(inputs, tmp_path):
    """The engine asks the graph for its outputs by the manifest's names: a manifest
    listing them in another order gives the same answers, not swapped arrays."""
    from gazenlq.engine import SearchEngine

    bundle, lib, _, _ = inputs
    b = linked_copy(bundle, tmp_path / "b")
    edit_manifest(b, lambda r: r["graphs"]["fp32"]["ground"]["outputs"].reverse())
    q = ["where did I put the cup", "when did I open the fridge"]
    want = SearchEngine.from_bundle(bundle, use_cache=False).search(lib, q)
    got = SearchEngine.from_bundle(b, use_cache=False).search(lib, q)
    assert [[(m.start_s, m.end_s) for m in r.moments] for r in got] == \
        [[(m.start_s, m.end_s) for m in r.moments] for r in want]


# -- caches: verified, repaired, never trusted --------------------------------------------

def _moments(result) -> list:
    return [[(m.video, m.start_s, m.end_s, m.score) for m in r.moments] for r in result]


def test_one_index_location_for_local_and_url_stores(tmp_path, monkeypatch):
    """``cache_root``: inside a local store by default; a URL store's index never in the
    bucket (the user's cache directory); ``cache_dir`` / ``$GAZENLQ_CACHE_DIR`` for both."""
    from platformdirs import user_cache_dir

    from gazenlq.engine.cache import CACHE_ENV, cache_root

    monkeypatch.delenv(CACHE_ENV, raising=False)
    store, url = tmp_path / "v1.zarr", "s3://videos/lib/v1.zarr"
    assert cache_root(store) == store / "cache"
    home = cache_root(url)
    assert home.parent.parent == Path(user_cache_dir("gazenlq")) / "index"
    assert home.parent.name.startswith("v1.zarr-") and home.name == "cache"
    assert cache_root("s3://other/lib/v1.zarr") != home  # same name, another URL
    given_dir = tmp_path / "idx"
    for target in (store, url):
        chosen = cache_root(target, given_dir)
        assert chosen.parent.parent == given_dir and chosen.name == "cache"
        monkeypatch.setenv(CACHE_ENV, str(given_dir))
        assert cache_root(target) == chosen
        monkeypatch.delenv(CACHE_ENV)
    assert cache_root(store, given_dir) != cache_root(url, given_dir)


@pytest.mark.parametrize("damage", ["altered", "truncated", "missing", "metadata"])
def test_damaged_index_never_changes_an_answer_and_is_repaired(inputs, tmp_path, damage,
                                                               recwarn):
    from gazenlq.engine import SearchEngine
    from gazenlq.engine.cache import check_caches
    from gazenlq.errors import GazeNLQWarning

    bundle, lib, _, _ = inputs
    store = tmp_path / "lib" / sorted(lib.glob("*.zarr"))[0].name
    shutil.copytree(lib / store.name, store, ignore=shutil.ignore_patterns("cache"))
    queries = ["where did I put the cup", "when did I open the fridge"]
    fresh = _moments(SearchEngine.from_bundle(bundle, use_cache=False).search(store, queries))
    engine = SearchEngine.from_bundle(bundle)
    assert _moments(engine.search(store, queries)) == fresh  # writes the index
    key = next(p for p in (store / "cache").iterdir() if p.is_dir())
    file = key / "video_emb.npy"
    if damage == "altered":  # same size, one value changed: only the checksum sees it
        data = np.load(file)
        data[0, 0, 0] += 1.0
        np.save(file, data)
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[:-4096])
    elif damage == "missing":
        file.unlink()
    else:
        (key / "zarr.json").write_text("{")
    recwarn.clear()
    assert _moments(SearchEngine.from_bundle(bundle).search(store, queries)) == fresh
    lines = [str(w.message) for w in recwarn if issubclass(w.category, GazeNLQWarning)]
    assert len(lines) == 1 and "repairing" in lines[0], lines
    assert check_caches(store) == 1  # repaired and verified again
    assert _moments(SearchEngine.from_bundle(bundle).search(store, queries)) == fresh
    assert not [p for p in store.iterdir() if p.name.startswith(".")]


# -- read-only stores, --cache-dir, full disks, killed parents (other processes) ----------

def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    sys.platform != "linux" or not _can_unshare(),
    reason="needs Linux user + mount namespaces (unshare -rm) for a real read-only mount "
           "or a small tmpfs")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _search_json(argv: list, *, wrap: str | None = None) -> tuple[list, str]:
    cmd = [script("gaze-search"), *map(str, argv), "--json", "--quiet"]
    if wrap is not None:
        cmd = ["unshare", "-rm", "sh", "-c", wrap + ' && exec "$@"', "sh", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr
    return [r["moments"] for r in json.loads(out.stdout)["results"]], out.stderr


@needs_namespaces
@pytest.mark.slow
def test_read_only_store_and_cache_dir_give_the_no_cache_moments(inputs, tmp_path):
    bundle, lib, _, _ = inputs
    src = sorted(lib.glob("*.zarr"))[0]
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copytree(src, ro / src.name, ignore=shutil.ignore_patterns("cache"))
    args = [ro, "where did I put the cup", "what did I cut", "--bundle", bundle]
    want, _ = _search_json([*args, "--no-cache"])
    before = snapshot(ro)
    mount = f"mount --bind -o ro {ro} {ro}"
    got, err = _search_json(args, wrap=mount)
    assert got == want
    assert len(err.splitlines()) == 1 and err.startswith("warning: ")
    assert "Read-only file system" in err and "--cache-dir" in err
    cache = tmp_path / "cache"
    for _ in range(2):  # writes the index outside the store, then reads it
        got, err = _search_json([*args, "--cache-dir", cache], wrap=mount)
        assert got == want and err == ""
    assert list(cache.glob("*/cache/*/video_emb.npy"))
    assert snapshot(ro) == before


def _in_small_tmpfs(size: str, setup: str, cmd: list, check: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``/tmp/full`` a ``size`` tmpfs (after ``setup``); ``check`` runs
    after it (its output is the listing of what is left)."""
    script_ = (f'mkdir -p "$D" && mount -t tmpfs -o size={size} tmpfs "$D" && {setup} && '
               '{ "$@"; echo "rc=$?" >&2; }; echo "--left--"; ' + check)
    return subprocess.run(["unshare", "-rm", "sh", "-c", script_, "sh", *map(str, cmd)],
                          capture_output=True, text=True, timeout=600,
                          env={**_env(), "D": "/tmp/full"})


@needs_namespaces
@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_nothing(inputs, tmp_path):
    """A full disk during synth, export, ingest (store writes, two workers) and a cache
    write."""
    bundle, lib, ckpt, _ = inputs
    listing = 'find "$D" -mindepth 1 | sort'
    synth_ = _in_small_tmpfs("300k", "true", [script("gaze-synth"), "/tmp/full/ds",
                                              "--sessions", "2"], listing)
    export_ = _in_small_tmpfs("2m", "true", [script("gaze-export"), ckpt, "-o",
                                             "/tmp/full/bundle", "--quiet"], listing)
    from tests.test_ingest_features import make_sources

    make_sources(tmp_path / "src", {"egovlp": {"v1": 3000, "v2": 3000},
                                    "omnivore": {"v1": 3000, "v2": 3000}},
                 {"egovlp": 256, "omnivore": 128})
    ingest_ = _in_small_tmpfs("600k", "true", [
        script("gaze-ingest"), "--video-source", f"egovlp={tmp_path / 'src' / 'egovlp'}",
        "--gaze-source", f"omnivore={tmp_path / 'src' / 'omnivore'}", "--out",
        "/tmp/full/stores", "--quiet"], listing)
    for out in (synth_, export_, ingest_):
        err, left = out.stdout.split("--left--")[0] + out.stderr, out.stdout.split("--left--")[1]
        lines = [ln for ln in out.stderr.splitlines() if not ln.startswith("rc=")]
        assert "rc=2" in out.stderr, out.stderr
        assert len(lines) == 1 and "No space left on device" in lines[0], err
        assert "/tmp/full" in lines[0]
        assert [p for p in left.split() if "/." in p or "partial" in p or "tmp-" in p] == [], left
    # the index does not fit beside the store: answered anyway, one warning, no partial
    first = sorted(lib.glob("*.zarr"))[0]
    src = tmp_path / "plain" / first.name
    shutil.copytree(first, src, ignore=shutil.ignore_patterns("cache", ".*"))
    kib = 4 * sum(-(-f.stat().st_size // 4096) if f.is_file() else 1 for f in src.rglob("*"))
    search_ = _in_small_tmpfs(f"{kib + 24}k", f'cp -r {src} "$D"/',
                              [script("gaze-search"), "/tmp/full", "where is the cup",
                               "--bundle", bundle, "--json", "--quiet"],
                              'find "$D" -name ".*" -o -name "*.npy" | sort')
    assert "rc=0" in search_.stderr, search_.stderr
    warn = [ln for ln in search_.stderr.splitlines() if not ln.startswith("rc=")]
    assert len(warn) == 1 and "No space left on device" in warn[0], (kib, search_.stderr)
    body, left = search_.stdout.split("--left--")
    want, _ = _search_json([src.parent, "where is the cup", "--bundle", bundle, "--no-cache"])
    assert [r["moments"] for r in json.loads(body)["results"]] == want
    assert left.strip() == ""


@pytest.mark.slow
def test_killing_the_parent_stops_its_workers(tmp_path):
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen([script("gaze-synth"), str(tmp_path / "ds"), "--sessions", "40",
                             "--jobs", "2"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    workers: list = []
    for _ in range(600):  # until both workers run (bounded: 60 s)
        workers = parent.children(recursive=True)
        if len([w for w in workers if "resource_tracker" not in " ".join(w.cmdline())]) >= 2:
            break
        time.sleep(0.1)
    assert workers, "no worker started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, [w.cmdline() for w in alive]
    # the workers unwound: their half-written stores were removed, not left behind
    assert not list((tmp_path / "ds").rglob(".*partial*"))


def test_damaged_resume_state_is_one_line_naming_the_file(inputs, tmp_path):
    from gazenlq.training import checkpoint

    _, _, ckpt, _ = inputs
    last = linked_copy(ckpt.parent / "last", tmp_path / "last")
    replace(last / "state" / "raw.safetensors", (last / "state" / "raw.safetensors")
            .read_bytes()[:100])
    with pytest.raises(GazeNLQError, match=r"state/raw\.safetensors: sha256 differs") as info:
        checkpoint.load_resume(last)
    assert "\n" not in str(info.value)
    replace(last / "state" / "raw.safetensors", (ckpt.parent / "last" / "state" /
                                                 "raw.safetensors").read_bytes())
    replace(last / "state" / "trainer.json", b"{")
    with pytest.raises(GazeNLQError, match=r"trainer\.json: sha256 differs"):
        checkpoint.load_resume(last)


def test_query_files_are_read_by_content_and_partial_clips_warned(inputs, tmp_path, capsys):
    """A byte-order mark is dropped, NLQ JSON is recognised whatever its extension's case,
    and a clip running past its store's end is searched where it is covered, with one
    warning; the submission holds nothing gaze-eval would reject."""
    from gazenlq.nlq.submission import load_submission

    bundle, lib, _, val = inputs
    s = Ctx(tmp_path, bundle, lib, Path(), val).store()
    text = tmp_path / "q.txt"
    text.write_bytes("\ufeffwhere is the cup\n\n".encode())
    search.main([str(s), "--queries", str(text), "--bundle", str(bundle), "--no-cache",
                 "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in out["results"]] == ["where is the cup"]
    from gazenlq.store import FeatureStore

    end = FeatureStore.open(s).info.duration_s
    raw = json.loads(val.read_text())
    _one_clip(s, end - 30.0, end + 30.0)(raw)
    nlq = tmp_path / "Q.JSON"
    nlq.write_bytes(b"\xef\xbb\xbf" + json.dumps(raw).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest: the CLI prints one line
        search.main([str(s.parent), "--queries", str(nlq), "--bundle", str(bundle),
                     "--no-cache", "--submission", str(tmp_path / "sub.json"), "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and \
        "only partly inside" in lines[0], lines
    entries = load_submission(tmp_path / "sub.json")
    assert entries and all(0.0 <= a <= b <= 60.0 for e in entries for a, b in e.predicted_times)
    # a clip ending exactly with its video is covered (its last steps' windows would run
    # past the end, so the grid has none there): no warning
    _one_clip(s, end - 60.0, end)(raw)
    nlq.write_text(json.dumps(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        search.main([str(s.parent), "--queries", str(nlq), "--bundle", str(bundle),
                     "--no-cache", "--submission", str(tmp_path / "sub.json"), "--quiet"])
    assert capsys.readouterr().err == ""
