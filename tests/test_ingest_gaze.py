"""Ego4D gaze CSVs: parsing, the documented frame alignment (nearest sample, half-frame gap
rule, y flip, truncation), and the per-step maps and types written into the stores."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from gazenlq.errors import GazeNLQError
from gazenlq.gaze.heatmap import frame_heatmap
from gazenlq.ingest import frame_gaze, read_gaze_csv
from gazenlq.ingest.gaze_csv import GazeSamples
from gazenlq.store import GAZE_MAPS, GAZE_TYPE, FeatureStore, GazeType, validate_store
from gazenlq.timegrid import EGO4D
from tests.conftest import script
from tests.test_ingest_features import features, ingest, save_pt

COLUMNS = ["component_idx", "component_timestamp_s", "canonical_timestamp_s", "world_index",
           "confidence", "norm_pos_x", "norm_pos_y", "base_data",
           *(f"{p}_{a}" for p in ("gaze_point_3d", "eye_center0_3d", "gaze_normal0",
                                  "eye_center1_3d", "gaze_normal1") for a in "xyz")]
HZ = 250.0


def write_gaze_csv(path: Path, t, nx, ny, columns=COLUMNS) -> Path:
    """An Ego4D-format CSV: only time, confidence, world_index and norm_pos are filled."""
    assert len(COLUMNS) == 23
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns)]
    for ti, xi, yi in zip(t, nx, ny):
        row = {"component_idx": "0", "component_timestamp_s": f"{ti:.6f}",
               "canonical_timestamp_s": f"{ti:.6f}", "world_index": str(int(ti * 30)),
               "confidence": "0.93", "norm_pos_x": f"{xi:.6f}", "norm_pos_y": f"{yi:.6f}"}
        lines.append(",".join(row.get(c, "") for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_flips_y_sorts_and_drops_empty_samples(tmp_path):
    path = write_gaze_csv(tmp_path / "g.csv", [0.2, 0.0, 0.1], [0.1, 0.3, 0.5],
                          [0.8, 0.25, 1.4])
    with open(path, "a") as f:  # a sample without a position, and a blank line
        f.write("0,0.3,0.3,9,0.0,,,," + "," * 14 + "\n\n")
    s = read_gaze_csv(path)
    np.testing.assert_allclose(s.t, [0.0, 0.1, 0.2])
    np.testing.assert_allclose(s.x, [0.3, 0.5, 0.1])
    np.testing.assert_allclose(s.y, [0.75, -0.4, 0.2])  # image y = 1 - norm_pos_y, unclipped


def test_missing_columns_are_named(tmp_path):
    cols = [c for c in COLUMNS if c not in ("canonical_timestamp_s", "norm_pos_y")]
    path = write_gaze_csv(tmp_path / "g.csv", [0.0], [0.5], [0.5], columns=cols)
    with pytest.raises(GazeNLQError) as err:
        read_gaze_csv(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: missing column(s) canonical_timestamp_s, norm_pos_y")
    assert "\n" not in msg


@pytest.mark.parametrize("text,needle", [
    ("", "empty file"),
    (",".join(COLUMNS) + "\n0,0.1,0.1,3,0.9,0.5\n", "line 2 has 6 fields, expected 23"),
    (",".join(COLUMNS) + "\n" + "0,0,0,0,1,0.5,0.5" + "," * 16 + "\n"
     + "0,0.1,zz,3,0.9,0.5,0.5" + "," * 16 + "\n", "line 3: column 'canonical_timestamp_s'"),
])
def test_malformed_csv_is_one_line_naming_the_file(tmp_path, text, needle):
    path = tmp_path / "g.csv"
    path.write_text(text)
    with pytest.raises(GazeNLQError) as err:
        read_gaze_csv(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def samples(t, x) -> GazeSamples:
    t, x = np.asarray(t, float), np.asarray(x, float)
    return GazeSamples(t, x, 1 - x)


def test_frame_gaze_takes_the_nearest_sample_within_half_a_frame():
    s = samples([0.0, 0.03, 0.055, 0.10], [1, 2, 3, 4])
    x, y, tracked = frame_gaze(s, 6, 30.0)  # frames at 0, 33.3, 66.7, 100, 133.3, 166.7 ms
    np.testing.assert_array_equal(x, [1, 2, 3, 4, 4, 4])
    np.testing.assert_array_equal(y, 1 - x)
    np.testing.assert_array_equal(tracked, [1, 1, 1, 1, 0, 0])  # stream ends at 100 ms
    x, _, tracked = frame_gaze(samples([0.0, 0.5], [1, 2]), 2, 4.0)  # frame 1: a tie
    assert x[1] == 2 and not tracked[1]  # the later sample, as GLC; 250 ms > 125 ms away
    late = np.arange(1.0, 2.0, 1 / HZ)  # the stream starts at 1 s
    _, _, tracked = frame_gaze(samples(late, late), 40, 30.0)
    np.testing.assert_array_equal(tracked, np.arange(40) / 30 >= 1 - 1 / 60)
    x, y, tracked = frame_gaze(samples([], []), 5, 30.0)
    assert x.shape == y.shape == (5,) and not tracked.any()


def test_gaps_shorter_than_a_frame_stay_tracked():
    t = np.arange(0, 4, 1 / HZ)
    short = (t > 1.0) & (t < 1.02)  # 20 ms dropout
    long = (t > 2.0) & (t < 2.3)  # 300 ms blink
    s = samples(t[~(short | long)], np.linspace(0, 1, (~(short | long)).sum()))
    ft = np.arange(120) / 30
    _, _, tracked = frame_gaze(s, 120, 30.0)
    nearest = np.abs(ft[:, None] - s.t[None, :]).min(axis=1)  # brute force
    np.testing.assert_array_equal(tracked, nearest <= 1 / 60)
    assert tracked[(ft > 0.9) & (ft < 1.1)].all()
    assert not tracked[(ft > 2.02) & (ft < 2.28)].any() and tracked[ft < 2.0].all()


# Gaze script of the store test, in seconds: (start, end, norm_pos_x, norm_pos_y) or a gap.
SCRIPT = [(0, 10, 0.25, 0.75), (10, 20, 0.75, 0.25), (20, 25, 1.2, 0.5), (25, 27, None, None),
          (27, 30, 0.5, 0.5)]  # the stream ends at 30 s, the features run to 40 s
STREAM_END = 30.0


def script_samples() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(0, STREAM_END, 1 / HZ)
    nx, ny = np.full(len(t), np.nan), np.full(len(t), np.nan)
    for a, b, x, y in SCRIPT:
        inside = (t >= a) & (t < b)
        nx[inside], ny[inside] = x if x is not None else np.nan, y if y is not None else np.nan
    keep = np.isfinite(nx)
    return t[keep], nx[keep], ny[keep]


@pytest.fixture
def gaze_dataset(tmp_path):
    root, steps = tmp_path / "src", EGO4D.num_steps(40.0)
    for uid in ("with_gaze", "no_gaze"):
        save_pt(root / "egovlp" / f"{uid}.pt", features(steps, 4, 1))
        save_pt(root / "omnivore" / f"{uid}.pt", features(steps + 1, 3, 2))
    write_gaze_csv(tmp_path / "gaze" / "with_gaze.csv", *script_samples())
    write_gaze_csv(tmp_path / "gaze" / "unrelated.csv", [0.0], [0.5], [0.5])
    return root, tmp_path / "gaze", steps


def reference_maps(steps: int) -> np.ndarray:
    """Brute force: every frame's nearest sample within 1/60 s, mean of frame_heatmap."""
    t, nx, ny = script_samples()
    out = np.empty((steps, 64, 64))
    for i in range(steps):
        ft = np.arange(*EGO4D.step_frames(i)) / EGO4D.fps  # the 32 frames of step i
        d = np.abs(ft[:, None] - t[None, :])
        k = d.argmin(axis=1)
        out[i] = np.mean([frame_heatmap(np.clip(nx[j], 0, 1), np.clip(1 - ny[j], 0, 1),
                                        bool(d[f, j] <= 1 / 60)) for f, j in enumerate(k)],
                         axis=0)
    return out


def expected_step(i: int) -> tuple[int, tuple[int, int] | None] | None:
    """(gaze type, argmax cell) of a step lying entirely in one part of SCRIPT, else None."""
    start, end = EGO4D.step_bounds_s(i)
    first, last = start, end - 1 / 30  # times of the step's first and last frames
    tol = 1 / 60
    if first > STREAM_END + tol:
        return GazeType.UNTRACKED, None
    for a, b, x, y in SCRIPT:
        if x is None and first > a + tol and last < b - tol:
            return GazeType.UNTRACKED, None
        if x is not None and first >= a and last < b:
            kind = GazeType.TRUNCATED if not (0 <= x <= 1 and 0 <= y <= 1) else GazeType.FIXATION
            cell = (round(np.clip(1 - y, 0, 1) * 64), round(np.clip(x, 0, 1) * 64))
            return kind, (min(cell[0], 63), min(cell[1], 63))
    return None


def test_store_steps_follow_the_documented_alignment(gaze_dataset, tmp_path):
    root, gaze_dir, steps = gaze_dataset
    results = ingest(root, tmp_path / "out", video=("egovlp",), gaze_dir=gaze_dir,
                     dtype="float32")
    assert [(r.video_uid, r.gaze, r.steps) for r in results] == [
        ("no_gaze", False, steps), ("with_gaze", True, steps)]
    assert not FeatureStore.open(tmp_path / "out" / "no_gaze.zarr").has_gaze_maps
    assert not (tmp_path / "out" / "unrelated.zarr").exists()
    store = FeatureStore.open(tmp_path / "out" / "with_gaze.zarr")
    validate_store(store.path)
    assert store.extra["ingest"]["gaze_csv"] == "with_gaze.csv"
    maps, types = store.read(GAZE_MAPS), store.read(GAZE_TYPE)
    assert maps.shape == (steps, 64, 64) and types.shape == (steps,)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1, rtol=1e-5)
    np.testing.assert_allclose(maps, reference_maps(steps), atol=1e-7, rtol=1e-5)
    seen = {}
    for i in range(steps):
        want = expected_step(i)
        if want is None:  # straddles two parts: only the majority type is defined
            continue
        kind, cell = want
        assert types[i] == kind, (i, types[i], kind)
        if cell is None:
            np.testing.assert_allclose(maps[i], 1 / 4096, rtol=1e-6)
        else:
            assert np.unravel_index(maps[i].argmax(), (64, 64)) == cell, i
        seen[(kind, cell)] = seen.get((kind, cell), 0) + 1
    assert seen == {(GazeType.FIXATION, (16, 16)): 17, (GazeType.FIXATION, (48, 48)): 17,
                    (GazeType.TRUNCATED, (32, 63)): 7, (GazeType.UNTRACKED, None): 2 + 17,
                    (GazeType.FIXATION, (32, 32)): 4}
    assert (types[57:] == GazeType.UNTRACKED).all()  # everything after the stream ended


def test_empty_stream_gives_untracked_uniform_steps(tmp_path):
    root = tmp_path / "src"
    save_pt(root / "egovlp" / "v.pt", features(10, 4, 1))
    save_pt(root / "omnivore" / "v.pt", features(10, 3, 2))
    write_gaze_csv(tmp_path / "gaze" / "v.csv", [], [], [])
    ingest(root, tmp_path / "out", video=("egovlp",), gaze_dir=tmp_path / "gaze")
    store = FeatureStore.open(tmp_path / "out" / "v.zarr")
    assert (store.read(GAZE_TYPE) == GazeType.UNTRACKED).all()
    np.testing.assert_allclose(store.read(GAZE_MAPS), 1 / 4096, rtol=1e-3)


def test_adding_gaze_later_needs_overwrite(gaze_dataset, tmp_path):
    root, gaze_dir, _ = gaze_dataset
    out = tmp_path / "out"
    ingest(root, out, video=("egovlp",))
    with pytest.raises(GazeNLQError, match=r"with_gaze\.zarr: exists but was written"):
        ingest(root, out, video=("egovlp",), gaze_dir=gaze_dir)
    results = ingest(root, out, video=("egovlp",), gaze_dir=gaze_dir, overwrite=True)
    assert [r.gaze for r in results] == [False, True]


def cli_args(root: Path, gaze_dir: Path, out: Path) -> list[str]:
    return [script("gaze-ingest"), "--video-source", f"egovlp={root / 'egovlp'}",
            "--gaze-source", f"omnivore={root / 'omnivore'}", "--gaze-dir", str(gaze_dir),
            "--out", str(out), "--jobs", "2"]


def test_cli_with_gaze_dir(gaze_dataset, tmp_path):
    root, gaze_dir, steps = gaze_dataset
    res = subprocess.run(cli_args(root, gaze_dir, tmp_path / "out"), capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    rows = [line.split() for line in res.stdout.splitlines()[2:4]]
    assert rows == [["no_gaze", str(steps), "4", "3", "no", "written"],
                    ["with_gaze", str(steps), "4", "3", "yes", "written"]]


def test_cli_csv_with_missing_columns_is_one_line_exit_2(gaze_dataset, tmp_path):
    root, gaze_dir, _ = gaze_dataset
    bad = write_gaze_csv(gaze_dir / "with_gaze.csv", [0.0], [0.5], [0.5],
                         columns=[c for c in COLUMNS if c != "norm_pos_x"])
    res = subprocess.run(cli_args(root, gaze_dir, tmp_path / "out"), capture_output=True,
                         text=True)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert str(bad) in res.stderr and "missing column(s) norm_pos_x" in res.stderr
