"""Feature store: round trips, windows, plain-zarr readability, damage -> one clear error."""

from __future__ import annotations

import itertools
import json
import subprocess

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.errors import StoreError
from gazenlq.store import (
    GAZE_MAPS,
    GAZE_TYPE,
    FeatureStore,
    StoreWriter,
    plan_windows,
    validate_store,
)
from gazenlq.store.writer import partial_paths
from gazenlq.timegrid import TimeGrid
from tests.conftest import script

GRID = TimeGrid(30.0, 32, 16)


def make_data(t: int, dv: int = 12, dg: int = 20, seed: int = 0, dtype="float16"):
    rng = np.random.default_rng(seed)
    maps = rng.random((t, 64, 64)).astype(dtype)
    return {
        "video": rng.standard_normal((t, dv)).astype(dtype),
        "gaze": rng.standard_normal((t, dg)).astype(dtype),
        "gaze_maps": maps,
        "gaze_type": rng.integers(0, 4, size=t).astype(np.uint8),
    }


def write(path, data, *, blocks=(37,), chunk_steps=64, with_gaze=True, **kw):
    t = len(data["video"])
    with StoreWriter(path, video_uid="vid-1", video_dim=data["video"].shape[1],
                     gaze_dim=data["gaze"].shape[1], grid=GRID, duration_s=kw.pop("duration", None),
                     video_sources=("egovlp",), gaze_sources=("omnivore",),
                     with_gaze_maps=with_gaze, chunk_steps=chunk_steps,
                     dtype=str(data["video"].dtype), **kw) as w:
        i, k = 0, 0
        while i < t:
            n = blocks[k % len(blocks)]
            k += 1
            w.append(data["video"][i:i + n], data["gaze"][i:i + n],
                     data["gaze_maps"][i:i + n] if with_gaze else None,
                     data["gaze_type"][i:i + n] if with_gaze else None)
            i += n
    return path


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("blocks", [(1000,), (37,), (64,), (5, 200, 1)])
def test_round_trip_every_array_and_attribute(tmp_path, dtype, blocks):
    data = make_data(301, dtype=dtype)
    path = write(tmp_path / "v.zarr", data, blocks=blocks)
    store = FeatureStore.open(path)
    info = store.info
    assert (info.video_uid, info.num_steps, info.grid) == ("vid-1", 301, GRID)
    assert info.video_sources == ("egovlp",) and info.gaze_sources == ("omnivore",)
    assert info.duration_s == pytest.approx((16 * 300 + 32) / 30)
    np.testing.assert_array_equal(store.read("video_features"), data["video"])
    np.testing.assert_array_equal(store.read("gaze_features"), data["gaze"])
    np.testing.assert_array_equal(store.read(GAZE_MAPS), data["gaze_maps"])
    np.testing.assert_array_equal(store.read(GAZE_TYPE), data["gaze_type"])
    np.testing.assert_array_equal(store.gaze_valid(), data["gaze_type"] != 0)
    assert store.read("video_features").dtype == np.dtype(dtype)
    assert validate_store(path) == info
    assert not partial_paths(path)


def test_store_without_gaze_and_empty_store(tmp_path):
    data = make_data(10)
    store = FeatureStore.open(write(tmp_path / "a.zarr", data, with_gaze=False))
    assert not store.has_gaze_maps and store.dim("gaze_features") == 20
    with StoreWriter(tmp_path / "e.zarr", video_uid="e", video_dim=4, gaze_dim=4) as w:
        assert w.num_steps == 0
    assert FeatureStore.open(tmp_path / "e.zarr").num_steps == 0
    assert list(FeatureStore.open(tmp_path / "e.zarr").windows(8, 2)) == []


def test_plain_zarr_reads_it(tmp_path):
    data = make_data(100)
    path = write(tmp_path / "v.zarr", data, duration=54.0)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    g = zarr.open_group(path, mode="r")
    assert g.attrs["schema_version"] == 1 and g.attrs["fps"] == 30.0
    assert g.attrs["window_frames"] == 32 and g.attrs["stride_frames"] == 16
    assert g.attrs["duration_s"] == 54.0 and g.attrs["num_steps"] == 100
    np.testing.assert_array_equal(g["video_features"][:], data["video"])
    assert g["video_features"].metadata.dimension_names == ("time", "video_features_channel")
    assert g["gaze_maps"].chunks == (64, 64, 64)


def test_xarray_opens_it_as_it_is(tmp_path):
    """xarray maps one dimension name to one size: the two feature axes have their own."""
    xr = pytest.importorskip("xarray", reason="xarray is in the dev extra")
    data = make_data(100)
    path = write(tmp_path / "v.zarr", data, duration=54.0)
    ds = xr.open_zarr(path, consolidated=False)
    assert ds.sizes["time"] == 100
    assert ds["video_features"].shape == data["video"].shape
    assert ds["gaze_features"].shape == data["gaze"].shape
    assert ds.sizes["video_features_channel"] != ds.sizes["gaze_features_channel"]
    np.testing.assert_array_equal(ds["video_features"].values, data["video"])


@settings(max_examples=300, deadline=None)
@given(t=st.integers(0, 3000), length=st.integers(1, 700), data=st.data())
def test_window_plan_covers_every_step(t, length, data):
    overlap = data.draw(st.integers(0, length - 1))
    plan = plan_windows(t, length, overlap)
    if t == 0:
        assert plan == []
        return
    covered = np.zeros(t, dtype=int)
    for s, e in plan:
        assert 0 <= s < e <= t and e - s == min(length, t)
        covered[s:e] += 1
    assert covered.min() >= 1
    assert plan[0][0] == 0 and plan[-1][1] == t
    for (s0, e0), (s1, _) in itertools.pairwise(plan):
        assert s0 < s1 and e0 - s1 >= overlap  # consecutive windows share >= overlap steps
        assert s1 - s0 <= length - overlap  # and never skip ahead of the hop


def test_plan_windows_rejects_bad_arguments():
    for length, overlap in [(0, 0), (10, 10), (10, -1)]:
        with pytest.raises(ValueError):
            plan_windows(100, length, overlap)


@pytest.mark.parametrize("length,overlap,chunk", [(100, 20, 64), (64, 0, 64), (500, 499, 32),
                                                  (1000, 10, 64), (7, 3, 16)])
def test_prefetched_windows_equal_direct_slices(tmp_path, length, overlap, chunk):
    data = make_data(301)
    store = FeatureStore.open(write(tmp_path / "v.zarr", data, chunk_steps=chunk))
    wins = list(store.windows(length, overlap, arrays=("video_features", GAZE_MAPS),
                              prefetch=2, dtype=np.float32))
    assert [(w.start, w.stop) for w in wins] == plan_windows(301, length, overlap)
    for w in wins:
        assert w.arrays["video_features"].dtype == np.float32
        np.testing.assert_array_equal(w.arrays["video_features"], data["video"][w.start:w.stop])
        np.testing.assert_array_equal(w.arrays[GAZE_MAPS], data["gaze_maps"][w.start:w.stop])


def test_windows_stop_early_and_propagate_errors(tmp_path):
    data = make_data(400)
    path = write(tmp_path / "v.zarr", data)
    store = FeatureStore.open(path)
    gen = store.windows(50, 10, prefetch=1)
    next(gen)
    gen.close()  # the prefetch thread must stop, not hang
    (path / "video_features" / "c" / "4" / "0").unlink()
    with pytest.raises(StoreError, match=r"video_features.*step 256"):
        list(FeatureStore.open(path).windows(50, 10))


def one_line_error(path, match: str) -> str:
    with pytest.raises(StoreError) as exc:
        validate_store(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    assert match in msg, msg
    return msg


@pytest.fixture
def good(tmp_path):
    return write(tmp_path / "v.zarr", make_data(200))


def test_truncated_chunk(good):
    chunk = good / "gaze_features" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    one_line_error(good, "'gaze_features' steps 64-128 cannot be read")


def test_missing_chunk(good):
    (good / "video_features" / "c" / "2" / "0").unlink()
    one_line_error(good, "'video_features' has invalid values at step 128")
    (good / "gaze_type" / "c" / "0").unlink()


def test_missing_gaze_type_chunk(good):
    (good / "gaze_type" / "c" / "1").unlink()
    one_line_error(good, "'gaze_type' has invalid values at step 64")


def test_nan_features(good):
    g = zarr.open_group(good, mode="r+")
    g["video_features"][77, 3] = np.nan
    one_line_error(good, "'video_features' has invalid values at step 77")


def test_wrong_dtype(good):
    g = zarr.open_group(good, mode="r+")
    del g["gaze_features"]
    g.create_array("gaze_features", shape=(200, 20), dtype="int32", chunks=(64, 20))
    one_line_error(good, "'gaze_features' has dtype int32, expected float16 or float32")


def test_wrong_shape(good):
    g = zarr.open_group(good, mode="r+")
    g["video_features"].resize((150, 12))
    one_line_error(good, "'video_features' has shape (150, 12)")


def test_wrong_map_size_and_lonely_gaze_type(good):
    g = zarr.open_group(good, mode="r+")
    del g[GAZE_MAPS]
    one_line_error(good, "has 'gaze_type' without its partner")
    g.create_array(GAZE_MAPS, shape=(200, 32, 32), dtype="float16", chunks=(64, 32, 32))
    one_line_error(good, "maps are (32, 32), expected (64, 64)")


@pytest.mark.parametrize("key", ["fps", "video_uid", "num_steps", "schema_version", "complete"])
def test_missing_attribute(good, key):
    g = zarr.open_group(good, mode="r+")
    attrs = dict(g.attrs)
    del attrs[key]
    g.attrs.clear()
    g.attrs.update(attrs)
    one_line_error(good, f"missing attribute {key!r}")


def test_newer_schema_and_incomplete_and_not_a_store(good, tmp_path):
    g = zarr.open_group(good, mode="r+")
    g.attrs["schema_version"] = 2
    one_line_error(good, "schema version 2 is newer")
    g.attrs.update({"schema_version": 1, "complete": False})
    one_line_error(good, "incomplete")
    one_line_error(tmp_path / "nothing.zarr", "no such feature store")
    (tmp_path / "plain").mkdir()
    one_line_error(tmp_path / "plain", "not a Zarr v3 group")


def test_writer_refuses_bad_blocks(tmp_path):
    w = StoreWriter(tmp_path / "v.zarr", video_uid="x", video_dim=4, gaze_dim=4)
    with pytest.raises(StoreError, match="NaN"):
        w.append(np.full((3, 4), np.nan), np.zeros((3, 4)))
    with pytest.raises(StoreError, match=r"gaze_features block has shape \(2, 4\)"):
        w.append(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(StoreError, match="without gaze maps"):
        w.append(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 64, 64)), np.zeros(3))
    w.abort()
    assert not (tmp_path / "v.zarr").exists() and not partial_paths(tmp_path / "v.zarr")


def test_crash_leaves_nothing_that_looks_complete(tmp_path):
    path = tmp_path / "v.zarr"
    with pytest.raises(RuntimeError), StoreWriter(path, video_uid="x", video_dim=4,
                                                  gaze_dim=4, chunk_steps=8) as w:
        w.append(np.zeros((20, 4)), np.zeros((20, 4)))
        raise RuntimeError("killed")
    assert not path.exists() and not partial_paths(path)
    # a hard kill (no cleanup) leaves a hidden, incomplete partial ...
    w = StoreWriter(path, video_uid="x", video_dim=4, gaze_dim=4, chunk_steps=8)
    w.append(np.zeros((20, 4)), np.zeros((20, 4)))
    [partial] = partial_paths(path)
    assert not path.exists() and partial.name.startswith(".")
    one_line_error(partial, "incomplete")
    # ... which the next write of the same store removes
    with StoreWriter(path, video_uid="x", video_dim=4, gaze_dim=4) as w2:
        w2.append(np.ones((5, 4)), np.ones((5, 4)))
    assert partial_paths(path) == [] and FeatureStore.open(path).num_steps == 5


def test_overwrite_is_atomic_and_explicit(tmp_path):
    path = write(tmp_path / "v.zarr", make_data(50, seed=1), with_gaze=False)
    with pytest.raises(StoreError, match="already exists"):
        write(path, make_data(50, seed=2), with_gaze=False)
    write(path, make_data(60, seed=2), with_gaze=False, overwrite=True)
    store = FeatureStore.open(path)
    assert store.num_steps == 60
    np.testing.assert_array_equal(store.read("video_features"), make_data(60, seed=2)["video"])


def test_cli_info_and_validate(good):
    out = subprocess.run([script("gaze-store"), "info", str(good), "--json"],
                         capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert doc["num_steps"] == 200 and doc["steps_per_second"] == 1.875
    assert {a["name"] for a in doc["arrays"]} == {"video_features", "gaze_features",
                                                 GAZE_MAPS, GAZE_TYPE}
    ok = subprocess.run([script("gaze-store"), "validate", str(good)], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    (good / "video_features" / "c" / "1" / "0").write_bytes(b"garbage")
    bad = subprocess.run([script("gaze-store"), "validate", str(good)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "video_features" in bad.stderr


def test_live_writers_partial_is_left_alone(tmp_path):
    """Two processes writing one store must not delete each other's partial data."""
    path = tmp_path / "v.zarr"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        live = tmp_path / f".v.zarr.partial-{sleeper.pid}-abcd1234"
        live.mkdir()
        dead = tmp_path / ".v.zarr.partial-999999999-abcd1234"
        dead.mkdir()
        with StoreWriter(path, video_uid="x", video_dim=4, gaze_dim=4) as w:
            w.append(np.ones((3, 4)), np.ones((3, 4)))
        assert live.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    with StoreWriter(path, video_uid="x", video_dim=4, gaze_dim=4, overwrite=True) as w:
        w.append(np.ones((3, 4)), np.ones((3, 4)))
    assert partial_paths(path) == []


@pytest.mark.parametrize("start,stop", [(0, 301), (37, 301), (64, 200), (100, 101), (5, 5)])
def test_windows_of_a_step_range(tmp_path, start, stop):
    data = make_data(301)
    store = FeatureStore.open(write(tmp_path / "v.zarr", data))
    wins = list(store.windows(60, 12, arrays=("video_features",), start=start, stop=stop))
    assert [(w.start - start, w.stop - start) for w in wins] == plan_windows(stop - start, 60,
                                                                           12)
    for w in wins:
        np.testing.assert_array_equal(w.arrays["video_features"],
                                      data["video"][w.start:w.stop])
    with pytest.raises(StoreError, match="outside"):
        list(store.windows(60, 12, start=10, stop=400))


def test_metadata_read_without_zarr_is_zarrs(good, tmp_path):
    """The store's own reading of its metadata documents gives Zarr's shapes, dtypes and
    array names, for both dtypes and with the gaze arrays absent."""
    plain = write(tmp_path / "plain.zarr", make_data(90, dtype="float32"), with_gaze=False)
    for path in (good, plain):
        group = zarr.open_group(path, mode="r")
        want = {name: (a.shape, np.dtype(a.dtype)) for name, a in group.arrays()}
        got = {name: (a.shape, a.dtype) for name, a in FeatureStore.open(path).arrays.items()}
        assert got == want


@pytest.mark.parametrize("damage", ["not json {", '{"zarr_format": 2}', '[1, 2]',
                                    '{"zarr_format": 3, "node_type": "array", "shape": "x", '
                                    '"data_type": "float16"}'])
def test_damaged_array_metadata_is_one_line(good, damage):
    meta = good / "video_features" / "zarr.json"
    meta.write_text(damage)
    with pytest.raises(StoreError) as exc:
        FeatureStore.open(good)
    msg = str(exc.value)
    assert "\n" not in msg and str(good / "video_features") in msg and "Zarr v3" in msg
