"""Official Ego4D NLQ Recall@K / mIoU semantics, coverage warnings and the submission format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.errors import AnnotationError, GazeNLQError
from gazenlq.nlq.annotations import Query, QueryTable, load_queries
from gazenlq.nlq.evaluation import evaluate, iou
from gazenlq.nlq.submission import (
    Entry,
    load_submission,
    parse_submission,
    to_submission_json,
    write_submission,
)

REPO = Path(__file__).resolve().parents[1]
REAL_VAL = REPO / ".." / "shared" / "data" / "ego4d_nlq" / "nlq_val.json"


def table(*answers: tuple[float, float] | None) -> QueryTable:
    """Ground truth with one query per answer window: keys ("c", "a", i)."""
    return QueryTable("gt.json", tuple(
        Query("c", "v", "a", i, f"q{i}", None, (0.0, 100.0), answer,
              None if answer is None else answer)
        for i, answer in enumerate(answers)), ("c",))


def entry(idx: int, *windows: tuple[float, float], clip: str = "c") -> Entry:
    return Entry(clip, "a", idx, tuple(windows))


def test_iou_union_is_max_end_minus_min_start():
    assert iou([0.0, 4.0], [2.0, 6.0]) == pytest.approx(2 / 6)
    assert iou([0.0, 1.0], [3.0, 4.0]) == 0.0
    assert iou([[0.0, 10.0], [2.0, 2.0]], [0.0, 5.0]).tolist() == [0.5, 0.0]
    assert math.isnan(iou([5.0, 5.0], [5.0, 5.0]))


def test_tie_at_threshold_is_a_miss():
    """IoU exactly 0.3 / 0.5 does not pass: the official comparison is strict."""
    gt = table((0.0, 10.0), (0.0, 10.0))
    result = evaluate([entry(0, (0.0, 3.0)), entry(1, (0.0, 5.0))], gt)
    assert iou([0.0, 3.0], [0.0, 10.0]) == 0.3
    assert result.recall[1, 0.3] == 50.0  # only the 0.5 one passes 0.3
    assert result.recall[1, 0.5] == 0.0
    assert result.miou == pytest.approx(40.0)
    assert evaluate([entry(0, (0.0, 3.0))], gt, thresholds=[0.29]).recall[1, 0.29] == 100.0


def test_zero_length_windows():
    """A zero-length prediction on a zero-length ground truth has union 0: NaN, a miss."""
    gt = table((5.0, 5.0), (5.0, 5.0))
    result = evaluate([entry(0, (5.0, 5.0)), entry(1, (4.0, 6.0))], gt, thresholds=[0.0])
    assert result.recall == {(1, 0.0): 0.0, (5, 0.0): 0.0}
    assert result.miou == 0.0


def test_fewer_than_k_predictions_and_rank_cut():
    gt = table((10.0, 20.0), (10.0, 20.0), (10.0, 20.0))
    result = evaluate([
        entry(0, (10.0, 20.0)),                                    # hit at rank 1, only one
        entry(1, (50.0, 60.0), (0.0, 1.0), (11.0, 20.0)),           # hit at rank 3
        entry(2, *[(50.0, 60.0)] * 5, (10.0, 20.0)),                # hit at rank 6: too late
    ], gt)
    assert result.recall[1, 0.3] == pytest.approx(100 / 3)
    assert result.recall[5, 0.3] == pytest.approx(200 / 3)
    assert result.miou == pytest.approx(100 / 3)
    assert result.num_entries == 3 and result.warnings() == []


def test_duplicates_count_twice_and_warn():
    gt = table((0.0, 10.0), (0.0, 10.0))
    result = evaluate([entry(0, (0.0, 10.0)), entry(0, (50.0, 60.0)), entry(1, (0.0, 10.0))], gt)
    assert result.num_entries == 3
    assert result.recall[1, 0.5] == pytest.approx(200 / 3)
    assert [k.query_idx for k in result.duplicates] == [0]
    [warning] = result.warnings()
    assert warning.startswith("1 queries are predicted more than once")


def test_missing_queries_are_not_in_the_denominator_but_warned():
    gt = table((0.0, 10.0), (0.0, 10.0), (0.0, 10.0))
    result = evaluate([entry(1, (0.0, 10.0))], gt)
    assert result.recall[1, 0.5] == 100.0
    assert [k.query_idx for k in result.missing] == [0, 2]
    [warning] = result.warnings()
    assert warning.startswith("2 of 3 ground-truth queries have no prediction")
    assert "query_idx=0" in warning


@pytest.mark.parametrize("bad", [entry(3, (0.0, 1.0)), entry(0, (0.0, 1.0), clip="other")])
def test_unknown_key_is_an_error(bad):
    pattern = r"^preds\.json: results\[1\]: unknown query clip_uid=.* \(not in gt\.json\)$"
    with pytest.raises(AnnotationError, match=pattern):
        evaluate([entry(0, (0.0, 1.0)), bad], table((0.0, 1.0)), source="preds.json")


def test_unannotated_ground_truth_is_an_error():
    with pytest.raises(AnnotationError, match=r"^gt\.json: query .* has no answer window"):
        evaluate([entry(0, (0.0, 1.0))], table(None))


def test_empty_submission_is_an_error():
    with pytest.raises(AnnotationError, match=r"^p\.json: results: empty"):
        evaluate([], table((0.0, 1.0)), source="p.json")


@pytest.mark.parametrize(("ks", "thresholds", "message"), [
    ([0], [0.5], "K must be a positive integer"),
    ([1.5], [0.5], "K must be a positive integer"),
    ([], [0.5], "at least one K"),
    ([1], [1.5], r"IoU threshold must be in \[0, 1\]"),
    ([1], [float("nan")], "IoU threshold"),
])
def test_bad_settings(ks, thresholds, message):
    with pytest.raises(GazeNLQError, match=message):
        evaluate([entry(0, (0.0, 1.0))], table((0.0, 1.0)), ks=ks, thresholds=thresholds)


def test_configurable_k_and_thresholds_and_to_dict():
    result = evaluate([entry(0, (0.0, 6.0), (0.0, 10.0))], table((0.0, 10.0)),
                      ks=[2, 1, 2], thresholds=[0.7, 0.5])
    assert result.ks == (2, 1) and result.thresholds == (0.7, 0.5)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["recall"] == {"R2@0.7": 100.0, "R2@0.5": 100.0, "R1@0.7": 0.0, "R1@0.5": 100.0}
    assert d["miou"] == pytest.approx(60.0)
    assert (d["num_entries"], d["num_ground_truth"]) == (1, 1)
    assert d["missing"] == d["duplicates"] == d["warnings"] == []


def official_recall(preds, gts, k, theta):
    """A direct, loop-based transcription of the official rule, to cross-check."""
    hits = []
    for windows, (gs, ge) in zip(preds, gts, strict=True):
        hit = False
        for s, e in windows[:k]:
            inter = max(0.0, min(e, ge) - max(s, gs))
            union = max(e, ge) - min(s, gs)
            hit |= union > 0 and inter / union > theta
        hits.append(hit)
    return 100.0 * sum(hits) / len(hits)


small_windows = st.tuples(st.integers(0, 8), st.integers(0, 4)).map(
    lambda w: (w[0] / 2, (w[0] + w[1]) / 2))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(small_windows, st.lists(small_windows, min_size=1, max_size=7)),
                min_size=1, max_size=10))
def test_matches_loop_transcription(rows):
    gts = [gt for gt, _ in rows]
    preds = [windows for _, windows in rows]
    result = evaluate([entry(i, *w) for i, w in enumerate(preds)], table(*gts),
                      ks=(1, 3, 5), thresholds=(0.0, 0.3, 0.5))
    for k in (1, 3, 5):
        for theta in (0.0, 0.3, 0.5):
            assert result.recall[k, theta] == pytest.approx(official_recall(preds, gts, k, theta))


# --- submission file -------------------------------------------------------------------------


def test_submission_round_trip_and_atomic_write(tmp_path):
    entries = [entry(0, (1.0, 2.5), (0.0, 4.0)), entry(1, (3, 3))]
    path = tmp_path / "sub.json"
    path.write_text("old")
    write_submission(path, entries)
    assert load_submission(path) == [entry(0, (1.0, 2.5), (0.0, 4.0)), entry(1, (3.0, 3.0))]
    data = json.loads(path.read_text())
    assert (data["version"], data["challenge"]) == ("1.0", "ego4d_nlq_challenge")
    assert data["results"][0] == {"clip_uid": "c", "annotation_uid": "a", "query_idx": 0,
                                  "predicted_times": [[1.0, 2.5], [0.0, 4.0]]}
    assert list(tmp_path.iterdir()) == [path]


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub.json"
    path.write_text("old")
    with pytest.raises(AnnotationError, match="expected a finite number, got nan"):
        write_submission(path, [entry(0, (0.0, float("nan")))])  # checked before writing
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def good_submission() -> dict:
    return to_submission_json([entry(0, (0.0, 1.0)), entry(1, (2.0, 3.0))])


R = "results[1]"
DROP = object()


def on_entry(**changes):
    """A mutation of the second result entry: set fields, or remove those set to DROP."""
    def apply(data):
        item = data["results"][1]
        for key, value in changes.items():
            if value is DROP:
                del item[key]
            else:
                item[key] = value
        return data
    return apply


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["results"], "top level: expected an object, got a list"),
    (lambda d: {**d, "version": "2.0"}, "version: expected '1.0', got '2.0'"),
    (lambda d: {**d, "challenge": "nlq"}, "challenge: expected 'ego4d_nlq_challenge'"),
    (lambda d: {k: v for k, v in d.items() if k != "results"}, "top level: missing 'results'"),
    (on_entry(clip_uid=DROP), f"{R}: missing 'clip_uid'"),
    (on_entry(annotation_uid=DROP), f"{R}: missing 'annotation_uid'"),
    (on_entry(query_idx=1.0), f"{R}.query_idx: expected an integer, got a number"),
    (on_entry(query_idx=-1), f"{R}.query_idx: expected a non-negative integer, got -1"),
    (on_entry(predicted_times=[]), f"{R}.predicted_times: is empty"),
    (on_entry(predicted_times=[[1.0]]),
     f"{R}.predicted_times[0]: expected [start, end], got 1 values"),
    (on_entry(predicted_times=[[0, 1], [3.0, 2.0]]),
     f"{R}.predicted_times[1]: end 2.0 is before start 3.0"),
    (on_entry(predicted_times=[[0, None]]),
     f"{R}.predicted_times[0][1]: expected a finite number, got null"),
    (on_entry(predicted_times=[2, 3]), f"{R}.predicted_times[0]: expected a list, got an integer"),
])
def test_submission_errors(mutate, message):
    with pytest.raises(AnnotationError) as info:
        parse_submission(mutate(good_submission()), "sub.json")
    assert str(info.value).startswith(f"sub.json: {message}")
    assert "\n" not in str(info.value)


def test_submission_malformed_json(tmp_path):
    path = tmp_path / "sub.json"
    path.write_text('{"results": [}')
    with pytest.raises(AnnotationError, match=f"^{path}: not valid JSON"):
        load_submission(path)


@pytest.mark.skipif(not REAL_VAL.is_file(),
                    reason=f"Ego4D NLQ v2 val annotations not present at {REAL_VAL} "
                           "(Ego4D license: not shipped)")
def test_real_val_against_itself(tmp_path):
    gt = load_queries(REAL_VAL)
    path = tmp_path / "self.json"
    write_submission(path, [Entry(q.clip_uid, q.annotation_uid, q.query_idx, (q.answer,))
                            for q in gt])
    result = evaluate(load_submission(path), gt)
    assert result.num_entries == result.num_ground_truth == 4554
    assert all(v == 100.0 for v in result.recall.values())
    assert set(result.recall) == {(1, 0.3), (1, 0.5), (5, 0.3), (5, 0.5)}
    assert result.miou == pytest.approx(100.0)
    assert result.warnings() == []


def test_by_template_scores_each_template_against_its_own_queries():
    from gazenlq.nlq.evaluation import NO_TEMPLATE, evaluate_by_template

    templates = ["where", "where", "who", None]
    gt = QueryTable("gt.json", tuple(
        Query("c", "v", "a", i, f"q{i}", t, (0.0, 100.0), (10.0, 20.0), (10.0, 20.0))
        for i, t in enumerate(templates)), ("c",))
    entries = [entry(0, (10.0, 20.0)), entry(1, (50.0, 60.0)), entry(3, (11.0, 19.0))]
    res = evaluate_by_template(entries, gt)
    assert list(res) == ["where", NO_TEMPLATE]  # most entries first; "who" has none
    assert res["where"].recall[(1, 0.3)] == 50.0 and res["where"].num_entries == 2
    assert res["where"].num_ground_truth == 2 and not res["where"].missing
    assert res[NO_TEMPLATE].recall[(1, 0.5)] == 100.0
    # the overall result is the entry-weighted mean of the templates'
    overall = evaluate(entries, gt).recall[(1, 0.3)]
    assert overall == pytest.approx(sum(r.recall[(1, 0.3)] * r.num_entries
                                        for r in res.values()) / len(entries))
    with pytest.raises(AnnotationError, match="unknown query"):
        evaluate_by_template([entry(9, (0.0, 1.0))], gt)
