"""EgoSim: determinism, resumption, Ego4D schema, and that features and gaze carry the story."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.nlq.annotations import load_queries
from gazenlq.store import GAZE_MAPS, GAZE_TYPE, FeatureStore, GazeType
from gazenlq.store.writer import partial_paths
from gazenlq.synth.concepts import compute_text_embeddings, concept_names, text_embeddings
from gazenlq.synth.config import DIFFICULTIES, Difficulty, EgoSimConfig
from gazenlq.synth.dataset import (
    generate,
    plan_sessions,
    session_timeline,
    video_entry,
    write_session,
)
from gazenlq.synth.queries import SynthQuery, annotated
from gazenlq.synth.render import render
from gazenlq.synth.stats import nlq_stats
from gazenlq.synth.world import VERB_INDEX, World
from tests.conftest import script


def read_all(out: Path) -> dict:
    data = {}
    for p in sorted((out / "stores").glob("*.zarr")):
        s = FeatureStore.open(p)
        data[p.name] = {n: s.read(n) for n in s.group.array_keys()}
    for p in sorted((out / "annotations").glob("*.json")):
        data[p.name] = p.read_text()
    return data


def test_deterministic_by_seed(tmp_path):
    cfg = EgoSimConfig(seed=11, sessions=3)
    generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b", jobs=2)
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 7  # 3 stores, 3 NLQ files, looked_at.json
    for k in a:
        if isinstance(a[k], str):
            assert a[k] == b[k]
        else:
            for n in a[k]:
                np.testing.assert_array_equal(a[k][n], b[k][n])
    generate(EgoSimConfig(seed=12, sessions=3), tmp_path / "c")
    assert read_all(tmp_path / "c").keys() != a.keys()


def test_interrupted_generation_resumes(tmp_path):
    cfg = EgoSimConfig(seed=5, sessions=3)
    out = tmp_path / "d"
    generate(cfg, out)
    want = read_all(out)
    stores = sorted((out / "stores").glob("*.zarr"))
    mtime = stores[0].stat().st_mtime_ns
    # simulate a kill: one store and the annotations gone, a half-written store left behind
    import shutil

    shutil.rmtree(stores[1])
    (out / "annotations" / "nlq_train.json").unlink()
    stale = stores[1].parent / f".{stores[1].name}.partial-deadbeef"
    stale.mkdir()
    generate(cfg, out)
    assert read_all(out).keys() == want.keys()
    assert stores[0].stat().st_mtime_ns == mtime  # finished stores are not redone
    assert not partial_paths(stores[1])
    for k, v in read_all(out).items():
        if isinstance(v, str):
            assert v == want[k]
        else:
            for n in v:
                np.testing.assert_array_equal(v[n], want[k][n])


def test_other_config_in_same_directory_is_refused(tmp_path):
    from gazenlq.errors import GazeNLQError

    generate(EgoSimConfig(seed=1, sessions=1), tmp_path)
    with pytest.raises(GazeNLQError, match="another config"):
        generate(EgoSimConfig(seed=2, sessions=1), tmp_path)


def test_annotations_follow_ego4d_schema_and_stores(egosim_small):
    cfg, out, manifest = egosim_small
    by_uid = {s["video_uid"]: s for s in manifest["sessions"]}
    total = 0
    for split in ("train", "val", "test"):
        table = load_queries(out / "annotations" / f"nlq_{split}.json")
        assert not table.problems
        for q in table:
            total += 1
            session = by_uid[q.video_uid]
            assert session["split"] == split
            store = FeatureStore.open(out / session["store"])
            c0, c1 = q.clip_window
            assert 0 <= c0 < c1 <= store.info.duration_s + 1e-6
            a0, a1 = q.answer
            assert 0 <= a0 < a1 <= c1 - c0 + 1e-6
            assert q.answer_video == pytest.approx((a0 + c0, a1 + c0))
            assert 4 <= len(q.text.split()) <= 14
    assert total > 30
    for s in manifest["sessions"]:
        store = FeatureStore.open(out / s["store"])
        assert store.has_gaze_maps == s["has_gaze"]
        assert store.dim("video_features") == cfg.video_dim
        assert store.dim("gaze_features") == cfg.gaze_dim == 16 * cfg.cell_dim
        assert store.num_steps == cfg.grid.num_steps(store.info.duration_s)
        if s["has_gaze"]:
            maps = store.read(GAZE_MAPS).astype(np.float64)
            np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=5e-3)
            types = store.read(GAZE_TYPE)
            assert np.mean(types == GazeType.FIXATION) > 0.9 and (types == 0).any()


def _render_session(cfg: EgoSimConfig, index: int = 0):
    plan = next(p for p in plan_sessions(cfg) if p.index == index)
    tl = session_timeline(cfg, plan)
    world = World.build(cfg.seed, cfg.video_dim, cfg.cell_dim)
    steps = cfg.grid.num_steps(tl.duration_s)
    blocks = list(render(tl, world, cfg, steps, 123, with_gaze=True))
    cat = {k: np.concatenate([getattr(b, k) for b in blocks]) for k in
           ("video", "gaze", "gaze_maps", "gaze_type")}
    return tl, world, cat


def _steps_inside(cfg, tl, event):
    centre = cfg.grid.to_seconds(np.arange(cfg.grid.num_steps(tl.duration_s)))
    half = cfg.grid.window / cfg.grid.fps / 2
    return np.flatnonzero((centre - half >= event.start_s) & (centre + half <= event.end_s))


def test_gaze_marks_the_handled_object():
    cfg = EgoSimConfig(seed=2, sessions=1)
    tl, _world, r = _render_session(cfg)
    hits = total = 0
    for e in tl.events:
        if e.obj < 0:
            continue
        scene = np.searchsorted(tl.scene_start, e.start_s, side="right") - 1
        x, y = tl.scene_pos[scene, 0]
        for i in _steps_inside(cfg, tl, e):
            if r["gaze_type"][i] != GazeType.FIXATION:
                continue
            py, px = np.unravel_index(np.argmax(r["gaze_maps"][i]), (64, 64))
            hits += np.hypot(px / 64 - x, py / 64 - y) < 0.08
            total += 1
    assert total > 100
    # fixations land on the handled object except when gaze wanders (gaze_off = 0.2)
    assert 0.6 < hits / total < 0.95


def test_features_carry_the_hidden_concepts():
    cfg = EgoSimConfig(seed=4, sessions=1)
    tl, world, r = _render_session(cfg)
    video = r["video"]
    put = world.video_verb[VERB_INDEX["put"]]
    inside = np.zeros(len(video), bool)
    for e in tl.events:
        if e.verb == "put":
            inside[_steps_inside(cfg, tl, e)] = True
    proj = video @ put / np.sqrt(cfg.video_dim)
    assert inside.sum() > 10
    assert proj[inside].mean() > proj[~inside].mean() + 0.5
    # the spatial features are not the pooled ones: another, hidden map
    assert abs(np.corrcoef(video[:, :16].ravel(), r["gaze"][:, :16].ravel())[0, 1]) < 0.2


def test_text_alignment_mixes_name_embeddings_into_concept_directions():
    unaligned = World.build(4, 256, 32, text_align=0.0)
    for align in (0.25, 0.5, 0.8):
        world = World.build(4, 256, 32, text_align=align)
        for name in ("video_place", "video_object", "video_verb", "video_person",
                     "cell_object", "cell_person"):
            rows = getattr(world, name)
            np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
            # the random part is the unaligned world's direction, weighted sqrt(1 - align)
            cos = (rows * getattr(unaligned, name)).sum(axis=1)
            assert abs(cos.mean() - np.sqrt(1 - align)) < 0.1, (name, align)
        # the hand and position codes are not concepts: never aligned
        np.testing.assert_array_equal(world.cell_hand, unaligned.cell_hand)
        np.testing.assert_array_equal(world.cell_position, unaligned.cell_position)
    world = World.build(4, 256, 32, text_align=1.0)
    text = text_embeddings()["object"]
    text = text - text.mean(axis=0)
    # fully aligned: the geometry of the names' embeddings carries over to the features
    a = text @ text.T / np.outer(np.linalg.norm(text, axis=1), np.linalg.norm(text, axis=1))
    iu = np.triu_indices(len(a), 1)
    for rows, floor in ((world.video_object, 0.8), (world.cell_object, 0.35)):
        b = rows @ rows.T  # random projections 384 -> 256 and 384 -> 32
        assert np.corrcoef(a[iu], b[iu])[0, 1] > floor
    # the two spaces use independent projections: one map says nothing about the other
    video_sim = (world.video_object @ world.video_object.T)[iu]
    cell_sim = (world.cell_object @ world.cell_object.T)[iu]
    residual = np.corrcoef(video_sim - a[iu] * np.polyfit(a[iu], video_sim, 1)[0],
                           cell_sim - a[iu] * np.polyfit(a[iu], cell_sim, 1)[0])[0, 1]
    assert abs(residual) < 0.2


def test_shipped_concept_embeddings_match_the_text_encoder():
    pytest.importorskip("torch", reason="recomputing the embeddings needs PyTorch")
    fresh = compute_text_embeddings()
    shipped = text_embeddings()
    assert set(fresh) == set(shipped) == set(concept_names())
    for kind in fresh:
        np.testing.assert_allclose(shipped[kind], fresh[kind], atol=1e-5)


def test_old_manifests_without_text_align_read_as_unaligned():
    d = EgoSimConfig().to_dict()
    del d["difficulty"]["text_align"]
    assert EgoSimConfig.from_dict(d).difficulty.text_align == 0.0


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


@settings(max_examples=200, deadline=None)
@given(start=st.floats(0, 400), length=st.floats(0.25, 150), before=st.floats(0, 30),
       after=st.floats(0, 30), boundary=st.floats(0, 0.3), seed=st.integers(0, 2**32 - 1))
def test_annotated_windows_stay_on_their_event(start, length, before, after, boundary, seed):
    event = (start, start + length)
    bounds = (start - before, start + length + after)
    q = annotated(SynthQuery("t", "q", "x", "put", *event), bounds, boundary,
                  np.random.default_rng(seed))
    assert bounds[0] <= q.start_s < q.end_s <= bounds[1]
    # truncated at 2 std: the centre moves at most 0.6 lengths, the length shrinks at
    # most by exp(-0.6), so the annotator's window always overlaps the event (IoU >= 0.127)
    assert _iou((q.start_s, q.end_s), event) >= 0.12
    if boundary == 0:
        assert (q.start_s, q.end_s) == event


def test_boundary_knob_moves_the_answer_windows_only():
    crisp = EgoSimConfig(seed=6, sessions=2, difficulty=Difficulty(boundary=0.0))
    fuzzy = EgoSimConfig(seed=6, sessions=2)
    assert fuzzy.difficulty.boundary == 0.3
    ious = []
    for plan in plan_sessions(crisp):
        tl = session_timeline(crisp, plan)
        assert tl.events == session_timeline(fuzzy, plan).events
        a, b = video_entry(crisp, plan, tl), video_entry(fuzzy, plan, tl)
        assert video_entry(fuzzy, plan, tl) == b  # deterministic per seed
        qa = [q for c in a["clips"] for g in c["annotations"] for q in g["language_queries"]]
        qb = [q for c in b["clips"] for g in c["annotations"] for q in g["language_queries"]]
        assert [q["query"] for q in qa] == [q["query"] for q in qb]
        ious += [_iou((x["clip_start_sec"], x["clip_end_sec"]),
                      (y["clip_start_sec"], y["clip_end_sec"])) for x, y in zip(qa, qb)]
    assert len(ious) > 10 and max(ious) <= 1.0 and min(ious) >= 0.12
    # the windows moved: with a centre shift of 0.3 lengths, a third or more below IoU 0.5
    assert 0.55 < np.mean(ious) < 0.85 and np.mean(np.array(ious) < 0.5) > 0.1


def test_fingerprint_follows_the_boundary_knob():
    crisp = EgoSimConfig(difficulty=Difficulty(boundary=0.0))
    # the worlds made before the knob (answer window = event) keep their fingerprint ...
    assert "boundary" not in crisp.to_dict()["difficulty"]
    assert crisp.fingerprint() == "4dfd43369df91d77"  # docs/results.md's world until 2026-12-03
    assert EgoSimConfig.from_dict(crisp.to_dict()) == crisp
    # ... and every other value of it is another world
    fingerprints = {EgoSimConfig(difficulty=Difficulty(boundary=b)).fingerprint()
                    for b in (0.0, 0.2, 0.3)}
    assert len(fingerprints) == 3 and EgoSimConfig().fingerprint() in fingerprints
    assert EgoSimConfig.from_dict(EgoSimConfig().to_dict()) == EgoSimConfig()


def test_difficulty_knob_changes_the_noise():
    easy = EgoSimConfig(seed=4, sessions=1).with_difficulty("easy")
    hard = EgoSimConfig(seed=4, sessions=1).with_difficulty("hard")
    assert DIFFICULTIES["hard"].clutter > DIFFICULTIES["easy"].clutter
    _, _, re = _render_session(easy)
    _, _, rh = _render_session(hard)
    rough = [np.abs(np.diff(r["video"], axis=0)).mean() for r in (re, rh)]
    assert rough[1] > 1.5 * rough[0]


def test_long_session_has_tiled_clips(tmp_path):
    cfg = EgoSimConfig(seed=0, sessions=1, session_hours=0.5, gaze_fraction=0.0)
    [plan] = plan_sessions(cfg)
    path = write_session(cfg, plan, tmp_path)
    store = FeatureStore.open(path)
    assert store.info.duration_s == 1800.0 and store.num_steps == cfg.grid.num_steps(1800.0)
    assert session_timeline(cfg, plan).clips == [(0.0, 480.0), (480.0, 960.0), (960.0, 1440.0)]


@pytest.mark.slow
def test_200_sessions_match_real_val_statistics(tmp_path, nlq_val):
    out = tmp_path / "egosim200"
    run = subprocess.run([script("gaze-synth"), str(out), "--sessions", "200", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert sum(s["sessions"] for s in json.loads(run.stdout)["splits"].values()) == 200
    tables = [load_queries(out / "annotations" / f"nlq_{s}.json")
              for s in ("train", "val", "test")]
    from gazenlq.nlq.annotations import QueryTable

    synth = nlq_stats(QueryTable("egosim", tuple(q for t in tables for q in t),
                                 tuple(c for t in tables for c in t.clip_uids)))
    real = nlq_stats(load_queries(nlq_val))
    assert real.answer_median_s == pytest.approx(4.0, abs=0.01)  # the file is what we think
    # tolerances: medians within 15 %, tails within 30 %, clip median within 3 %
    assert synth.answer_median_s == pytest.approx(real.answer_median_s, rel=0.15)
    assert synth.answer_p5_s == pytest.approx(real.answer_p5_s, rel=0.30)
    assert synth.answer_p95_s == pytest.approx(real.answer_p95_s, rel=0.30)
    assert synth.clip_median_s == pytest.approx(real.clip_median_s, rel=0.03)
    assert synth.clip_p5_s == pytest.approx(real.clip_p5_s, rel=0.15)
    assert synth.clip_p95_s == pytest.approx(real.clip_p95_s, rel=0.15)
    assert synth.queries_per_clip == pytest.approx(real.queries_per_clip, rel=0.15)
    assert synth.answer_le_1s == pytest.approx(real.answer_le_1s, abs=0.04)
    assert synth.templates == 13
    assert abs(synth.words_p5 - real.words_p5) <= 1 and abs(synth.words_p95 - real.words_p95) <= 1
