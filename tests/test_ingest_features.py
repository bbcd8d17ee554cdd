"""Ego4D .pt feature ingest: safe loading, length reconciliation, row alignment, resume,
parallel == serial, and the gaze-ingest CLI (one-line errors, exit 2)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from gazenlq.errors import GazeNLQError
from gazenlq.ingest import (
    IngestResult,
    Source,
    load_features,
    plan_ingest,
    reconcile,
    run_jobs,
)
from gazenlq.store import GAZE_INPUT, VIDEO, FeatureStore, validate_store
from gazenlq.store.writer import partial_paths
from gazenlq.timegrid import EGO4D
from tests.conftest import script


def save_pt(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def features(t: int, d: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((t, d)).astype("f4"))


def make_sources(root: Path, lengths: dict[str, dict[str, int]],
                 dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """``lengths[source][uid] = T``: write ``root/source/uid.pt``; return the tensors."""
    out = {}
    for k, (name, per_uid) in enumerate(lengths.items()):
        for j, (uid, t) in enumerate(per_uid.items()):
            out[f"{name}/{uid}"] = features(t, dims[name], seed=10 * k + j)
            save_pt(root / name / f"{uid}.pt", out[f"{name}/{uid}"])
    return out


def ingest(root: Path, out: Path, video=("egovlp", "internvideo"), gaze=("omnivore",),
           jobs: int = 1, **kw) -> list[IngestResult]:
    work, known = plan_ingest([Source.parse(f"{n}={root / n}") for n in video],
                              [Source.parse(f"{n}={root / n}") for n in gaze], out, **kw)
    return sorted([*known, *run_jobs(work, workers=jobs)], key=lambda r: r.video_uid)


DIMS = {"egovlp": 6, "internvideo": 10, "omnivore": 4}


@pytest.fixture
def three_sources(tmp_path):
    lengths = {"egovlp": {"v1": 40, "v2": 700}, "internvideo": {"v1": 41, "v2": 700},
               "omnivore": {"v1": 39, "v2": 701}}
    return tmp_path / "src", make_sources(tmp_path / "src", lengths, DIMS)


def test_rows_are_concatenated_per_step_and_short_tails_reconciled(three_sources, tmp_path):
    root, data = three_sources
    results = ingest(root, tmp_path / "out", dtype="float32")
    assert [(r.video_uid, r.status, r.steps, r.video_dim, r.gaze_dim) for r in results] == [
        ("v1", "written", 39, 16, 4), ("v2", "written", 700, 16, 4)]
    for uid, t in (("v1", 39), ("v2", 700)):
        store = FeatureStore.open(tmp_path / "out" / f"{uid}.zarr")
        validate_store(store.path)
        video = store.read(VIDEO)
        want = np.concatenate([data[f"egovlp/{uid}"][:t], data[f"internvideo/{uid}"][:t]], 1)
        for i in (0, 1, t // 2, t - 1):  # step i of the store is row i of every input
            np.testing.assert_array_equal(video[i], want[i])
        np.testing.assert_array_equal(video, want)
        np.testing.assert_array_equal(store.read(GAZE_INPUT), data[f"omnivore/{uid}"][:t])
        info = store.info
        assert info.video_sources == ("egovlp", "internvideo")
        assert info.gaze_sources == ("omnivore",)
        assert info.grid == EGO4D and EGO4D.num_steps(info.duration_s) == t
        assert info.duration_s == pytest.approx((16 * (t - 1) + 32) / 30)
        assert not store.has_gaze_maps
    ingest_attrs = FeatureStore.open(tmp_path / "out" / "v1.zarr").extra["ingest"]
    assert ingest_attrs["source_steps"] == {"egovlp": 40, "internvideo": 41, "omnivore": 39}
    assert ingest_attrs["files"] == {"egovlp": "v1.pt", "internvideo": "v1.pt",
                                     "omnivore": "v1.pt"}


def test_float16_store_holds_the_rounded_rows(three_sources, tmp_path):
    root, data = three_sources
    ingest(root, tmp_path / "out", video=("internvideo",))
    store = FeatureStore.open(tmp_path / "out" / "v2.zarr")
    assert store.group[VIDEO].dtype == np.float16
    np.testing.assert_array_equal(store.read(VIDEO),
                                  data["internvideo/v2"][:700].numpy().astype(np.float16))


def test_reconcile_rule():
    a, b, c = Path("a.pt"), Path("b.pt"), Path("c.pt")
    assert reconcile({a: 100, b: 101, c: 99}) == 99
    assert reconcile({a: 100}) == 100
    assert reconcile({a: 100, b: 105}, max_diff=5) == 100
    with pytest.raises(GazeNLQError, match=r"b\.pt: 103 steps, but a\.pt has 100 .*3 apart"):
        reconcile({a: 100, b: 103})


def test_sources_far_apart_are_refused_naming_the_files(tmp_path):
    root = tmp_path / "src"
    make_sources(root, {"egovlp": {"v": 100}, "omnivore": {"v": 160}},
                 {"egovlp": 3, "omnivore": 2})
    with pytest.raises(GazeNLQError) as err:
        ingest(root, tmp_path / "out", video=("egovlp",))
    msg = str(err.value)
    assert "\n" not in msg and str(root / "omnivore" / "v.pt") in msg
    assert str(root / "egovlp" / "v.pt") in msg and "60 apart" in msg
    assert not (tmp_path / "out" / "v.zarr").exists()


def test_uid_missing_from_a_source_is_reported_not_written(tmp_path):
    root = tmp_path / "src"
    make_sources(root, {"egovlp": {"a": 20, "b": 20}, "omnivore": {"a": 20, "c": 20}},
                 {"egovlp": 3, "omnivore": 2})
    results = ingest(root, tmp_path / "out", video=("egovlp",))
    assert [(r.video_uid, r.status, r.missing_sources) for r in results] == [
        ("a", "written", ()), ("b", "missing", ("omnivore",)), ("c", "missing", ("egovlp",))]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.zarr"]


def test_no_common_uid_is_an_error(tmp_path):
    root = tmp_path / "src"
    make_sources(root, {"egovlp": {"clip1": 5}, "omnivore": {"video1": 5}},
                 {"egovlp": 3, "omnivore": 2})
    with pytest.raises(GazeNLQError, match=r"no uid has a \.pt file in every source"):
        ingest(root, tmp_path / "out", video=("egovlp",))


class Evil:
    """Pickles into a call of os.system: weights_only loading must refuse to run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_dict_wrapped_and_other_float_tensors_are_accepted(tmp_path):
    x = features(7, 3, seed=1)
    got = load_features(save_pt(tmp_path / "d.pt", {"features": x, "fps": 30}))
    np.testing.assert_array_equal(got, x.numpy())
    got = load_features(save_pt(tmp_path / "h.pt", x.to(torch.bfloat16)))
    assert got.dtype == np.float32 and np.allclose(got, x.numpy(), atol=0.05)
    assert load_features(save_pt(tmp_path / "f.pt", x.double())).dtype == np.float64


@pytest.mark.parametrize("make,needle", [
    (lambda p: torch.save(Evil(p.with_suffix(".ran")), p), "GLOBAL posix.system"),  # torch zip
    (lambda p: p.write_bytes(pickle.dumps(Evil(p.with_suffix(".ran")))), "weights_only"),
    (lambda p: p.write_bytes(b"not a torch file"), "bad.pt: not a plain tensor file"),
    (lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"), "bad.pt: not a tensor file"),
    (lambda p: torch.save([1, 2, 3], p), "holds a list"),
    (lambda p: torch.save({"a": torch.ones(2, 2), "b": torch.ones(2, 2)}, p),
     "dict with 2 tensors"),
    (lambda p: torch.save({"meta": 1}, p), "dict with 0 tensors"),
    (lambda p: torch.save(torch.ones(5), p), "shape (5,)"),
    (lambda p: torch.save(torch.ones(2, 5, 3), p), "shape (2, 5, 3)"),
    (lambda p: torch.save(torch.ones(0, 4), p), "non-empty"),
    (lambda p: torch.save(torch.ones(5, 4, dtype=torch.int64), p), "torch.int64"),
    (lambda p: torch.save(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), p), "at step 1"),
    (lambda p: torch.save(torch.tensor([[0.0, float("inf")]]), p), "at step 0"),
])
def test_bad_feature_files_are_refused_in_one_line(tmp_path, make, needle):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(GazeNLQError) as err:
        load_features(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)
    assert not path.with_suffix(".ran").exists()  # the pickled command never ran


def test_float16_overflow_is_refused(tmp_path):
    root = tmp_path / "src"
    save_pt(root / "egovlp" / "v.pt", torch.full((4, 2), 1e6))
    save_pt(root / "omnivore" / "v.pt", torch.ones(4, 2))
    with pytest.raises(GazeNLQError, match=r"egovlp/v\.pt: values up to 1e\+06 overflow"):
        ingest(root, tmp_path / "out", video=("egovlp",))
    assert ingest(root, tmp_path / "out", video=("egovlp",), dtype="float32")[0].steps == 4


@pytest.mark.parametrize("spec,needle", [
    ("egovlp", "expected NAME=DIR"), ("=dir", "expected NAME=DIR"),
    ("ego vlp=dir", "expected NAME=DIR"), ("egovlp=/no/such/dir", "no such directory"),
])
def test_bad_source_specs(spec, needle):
    with pytest.raises(GazeNLQError, match=needle):
        Source.parse(spec)


def test_duplicate_source_names_and_empty_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    save_pt(tmp_path / "a" / "v.pt", torch.ones(3, 2))
    a, empty = Source.parse(f"x={tmp_path / 'a'}"), Source.parse(f"y={tmp_path / 'empty'}")
    with pytest.raises(GazeNLQError, match="unique"):
        plan_ingest([a], [a], tmp_path / "out")
    with pytest.raises(GazeNLQError, match=r"empty: no \.pt feature files \(source 'y'\)"):
        plan_ingest([a], [empty], tmp_path / "out")
    with pytest.raises(GazeNLQError, match=r"empty: no \.csv gaze files"):
        plan_ingest([a], [Source("z", a.directory)], tmp_path / "out",
                    gaze_dir=tmp_path / "empty")
    with pytest.raises(GazeNLQError, match=r"nope: no such directory \(gaze CSVs\)"):
        plan_ingest([a], [Source("z", a.directory)], tmp_path / "out",
                    gaze_dir=tmp_path / "nope")


def test_rerun_skips_and_changed_inputs_need_overwrite(three_sources, tmp_path):
    root, _ = three_sources
    out = tmp_path / "out"
    ingest(root, out)
    mtime = (out / "v1.zarr" / "zarr.json").stat().st_mtime_ns
    assert [r.status for r in ingest(root, out)] == ["skipped", "skipped"]
    assert [r.steps for r in ingest(root, out)] == [39, 700]
    assert (out / "v1.zarr" / "zarr.json").stat().st_mtime_ns == mtime
    save_pt(root / "omnivore" / "v1.pt", features(40, 4, seed=99))  # new input file
    with pytest.raises(GazeNLQError, match=r"v1\.zarr: exists but was written from other"):
        ingest(root, out)
    with pytest.raises(GazeNLQError, match="other inputs"):  # other sources, same files
        ingest(root, out, video=("egovlp",))
    assert [r.status for r in ingest(root, out, overwrite=True)] == ["written", "written"]
    assert [r.status for r in ingest(root, out)] == ["skipped", "skipped"]


def test_interrupted_or_damaged_stores_are_redone(three_sources, tmp_path):
    root, data = three_sources
    out = tmp_path / "out"
    ingest(root, out)
    zarr.open_group(out / "v1.zarr", mode="r+").attrs["complete"] = False  # writer died
    (out / "v2.zarr").rename(out / ".v2.zarr.partial-deadbeef")  # killed before the rename
    assert [r.status for r in ingest(root, out)] == ["written", "written"]
    assert partial_paths(out / "v2.zarr") == []
    for uid in ("v1", "v2"):
        validate_store(out / f"{uid}.zarr")
    np.testing.assert_array_equal(FeatureStore.open(out / "v1.zarr").read(GAZE_INPUT),
                                  data["omnivore/v1"].numpy().astype(np.float16))


def read_all(path: Path) -> dict:
    store = FeatureStore.open(path)
    return {"attrs": dict(store.group.attrs),
            **{n: store.read(n) for n in sorted(store.group.array_keys())}}


@pytest.mark.slow
def test_parallel_output_equals_serial(tmp_path):
    root = tmp_path / "src"
    uids = {f"v{i}": 30 + 200 * i for i in range(4)}
    make_sources(root, {"egovlp": uids, "omnivore": uids}, {"egovlp": 5, "omnivore": 3})
    serial = ingest(root, tmp_path / "serial", video=("egovlp",), jobs=1)
    parallel = ingest(root, tmp_path / "parallel", video=("egovlp",), jobs=2)
    assert serial == parallel
    for uid in uids:
        a, b = (read_all(tmp_path / d / f"{uid}.zarr") for d in ("serial", "parallel"))
        assert a.keys() == b.keys() and a["attrs"] == b["attrs"]
        for name in a.keys() - {"attrs"}:
            np.testing.assert_array_equal(a[name], b[name])


def test_parallel_error_stops_with_the_named_file(tmp_path):
    root = tmp_path / "src"
    make_sources(root, {"egovlp": {"a": 10, "b": 10}, "omnivore": {"a": 10, "b": 10}},
                 {"egovlp": 3, "omnivore": 2})
    save_pt(root / "omnivore" / "b.pt", torch.ones(10))
    with pytest.raises(GazeNLQError, match=r"omnivore/b\.pt: tensor has shape \(10,\)"):
        ingest(root, tmp_path / "out", video=("egovlp",), jobs=2)


# --- CLI ---------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([script("gaze-ingest"), *args], capture_output=True, text=True)


def test_cli_table_then_json_resume(three_sources, tmp_path):
    root, _ = three_sources
    args = ["--video-source", f"egovlp={root / 'egovlp'}", "--video-source",
            f"internvideo={root / 'internvideo'}", "--gaze-source",
            f"omnivore={root / 'omnivore'}", "--out", str(tmp_path / "out"), "--quiet"]
    first = cli(*args, "--jobs", "1")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split() == ["video", "steps", "Dv", "Dg", "gaze", "status"]
    assert lines[2].split() == ["v1", "39", "16", "4", "no", "written"]
    assert lines[3].split() == ["v2", "700", "16", "4", "no", "written"]
    assert "2 written, 0 skipped" in first.stdout
    again = cli(*args, "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert (doc["written"], doc["skipped"], doc["missing"]) == (0, 2, 0)
    assert [(v["video_uid"], v["status"], v["steps"], v["video_dim"], v["gaze_dim"])
            for v in doc["videos"]] == [("v1", "skipped", 39, 16, 4),
                                        ("v2", "skipped", 700, 16, 4)]


@pytest.mark.parametrize("case", ["nan", "pickle", "rank", "lengths", "spec", "nodir",
                                  "nosource", "exists"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, case):
    root = tmp_path / "src"
    make_sources(root, {"egovlp": {"v": 30}, "omnivore": {"v": 30}},
                 {"egovlp": 3, "omnivore": 2})
    bad = root / "omnivore" / "v.pt"
    video = ["--video-source", f"egovlp={root / 'egovlp'}"]
    gaze = ["--gaze-source", f"omnivore={root / 'omnivore'}"]
    out = ["--out", str(tmp_path / "out"), "--jobs", "1"]
    if case == "nan":
        save_pt(bad, torch.full((30, 2), float("nan")))
    elif case == "pickle":
        save_pt(bad, Evil(tmp_path / "ran"))
    elif case == "rank":
        save_pt(bad, torch.ones(30, 2, 2))
    elif case == "lengths":
        save_pt(bad, torch.ones(90, 2))
    elif case == "spec":
        video, bad = ["--video-source", "egovlp"], "'egovlp'"
    elif case == "nodir":
        gaze, bad = ["--gaze-source", "omnivore=/no/such/dir"], "/no/such/dir"
    elif case == "nosource":
        gaze, bad = [], "--gaze-source"
    else:
        (tmp_path / "out").write_text("a file")
        bad = tmp_path / "out"
    res = cli(*video, *gaze, *out)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and str(bad) in res.stderr, res.stderr
    assert not (tmp_path / "ran").exists()
