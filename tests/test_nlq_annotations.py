"""Ego4D NLQ annotation ingest (v1 / v2 / unannotated layouts), errors and the writer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.errors import AnnotationError
from gazenlq.nlq.annotations import (
    Query,
    QueryKey,
    load_queries,
    parse_queries,
    to_nlq_json,
    write_queries,
)

REPO = Path(__file__).resolve().parents[1]
REAL_VAL = REPO / ".." / "shared" / "data" / "ego4d_nlq" / "nlq_val.json"
needs_real_val = pytest.mark.skipif(
    not REAL_VAL.is_file(),
    reason=f"Ego4D NLQ v2 val annotations not present at {REAL_VAL} (Ego4D license: not shipped)")


def v2_file() -> dict:
    """Two videos, three clips in the v2 layout; one query has no text, one a null template."""
    def lq(start, text, template="Objects: Where is object X?"):
        return {"clip_start_sec": start, "clip_end_sec": start + 2.0,
                "video_start_sec": 100.0 + start, "video_end_sec": 102.0 + start,
                "template": template, "query": text, "slot_x": "cup"}

    def clip(uid, *annotations):
        return {"clip_uid": uid, "video_start_sec": 100.0, "video_end_sec": 580.0,
                "clip_start_sec": 0, "clip_end_sec": 480.0,
                "annotations": [{"annotation_uid": a, "language_queries": qs}
                                for a, qs in annotations]}

    return {"version": "2.0", "videos": [
        {"video_uid": "v0", "clips": [
            clip("c0", ("a0", [lq(1.0, "where is the cup?"), lq(5.0, "   ")]),
                 ("a1", [lq(7.5, "what did I cut?", template=None)])),
            clip("c1")]},
        {"video_uid": "v1", "clips": [clip("c2", ("a2", [lq(3.0, "where is the key?")]))]},
    ]}


def test_v2_layout(tmp_path):
    path = tmp_path / "nlq.json"
    path.write_text(json.dumps(v2_file()))
    table = load_queries(path)
    assert table.source == str(path)
    assert table.clip_uids == ("c0", "c1", "c2")
    assert [q.key for q in table] == [QueryKey("c0", "a0", 0), QueryKey("c0", "a0", 1),
                                       QueryKey("c0", "a1", 0), QueryKey("c2", "a2", 0)]
    first = table.queries[0]
    assert first == Query(clip_uid="c0", video_uid="v0", annotation_uid="a0", query_idx=0,
                          text="where is the cup?", template="Objects: Where is object X?",
                          clip_window=(100.0, 580.0), answer=(1.0, 3.0),
                          answer_video=(101.0, 103.0))
    assert first.clip_duration_s == 480.0
    assert table.queries[2].template is None


def test_empty_text_is_kept_flagged_and_reported():
    table = parse_queries(v2_file(), "nlq.json")
    assert len(table) == 4
    [problem] = table.problems
    assert problem.key == QueryKey("c0", "a0", 1)
    assert problem.path == "videos[0].clips[0].annotations[0].language_queries[1]"
    assert "empty" in problem.reason
    assert table.by_key()[problem.key].text == ""
    assert [q.key for q in table.with_text()] == [q.key for q in table if q.key != problem.key]


def test_missing_query_text_is_reported():
    data = v2_file()
    del data["videos"][1]["clips"][0]["annotations"][0]["language_queries"][0]["query"]
    table = parse_queries(data, "nlq.json")
    assert [p.key for p in table.problems] == [QueryKey("c0", "a0", 1), QueryKey("c2", "a2", 0)]


def test_v1_layout_clip_seconds_only():
    """Clips without a video window use clip_start_sec / clip_end_sec; answers map from them."""
    data = v2_file()
    for video in data["videos"]:
        for clip in video["clips"]:
            del clip["video_start_sec"], clip["video_end_sec"]
            clip["clip_start_sec"], clip["clip_end_sec"] = 30.0, 510.0
            for ann in clip["annotations"]:
                for lq in ann["language_queries"]:
                    del lq["video_start_sec"], lq["video_end_sec"]
    q = parse_queries(data, "v1.json").queries[0]
    assert q.clip_window == (30.0, 510.0)
    assert q.answer == (1.0, 3.0)
    assert q.answer_video == (31.0, 33.0)


def test_unannotated_queries_have_no_answer():
    data = v2_file()
    for video in data["videos"]:
        for clip in video["clips"]:
            for ann in clip["annotations"]:
                for lq in ann["language_queries"]:
                    for key in ("clip_start_sec", "clip_end_sec", "video_start_sec",
                                "video_end_sec"):
                        del lq[key]
    table = parse_queries(data, "test_unannotated.json")
    assert len(table) == 4
    assert all(q.answer is None and q.answer_video is None for q in table)


def _mutate(path: str, value=None, delete: bool = False):
    """A mutation of v2_file(): set or delete the item at a dotted/indexed path."""
    def apply(data):
        *parents, last = path.replace("[", ".").replace("]", "").split(".")
        obj = data
        for part in parents:
            obj = obj[int(part)] if part.isdigit() else obj[part]
        key = int(last) if last.isdigit() else last
        if delete:
            del obj[key]
        else:
            obj[key] = value
        return data
    return apply


A = "videos[0].clips[0].annotations[1]"
Q = "videos[0].clips[0].annotations[0].language_queries[0]"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: [d], "top level: expected an object, got a list"),
    (_mutate("videos", delete=True), "top level: missing 'videos'"),
    (_mutate("videos", {}), "videos: expected a list, got an object"),
    (_mutate("videos[1]", 3), "videos[1]: expected an object, got an integer"),
    (_mutate("videos[0].video_uid", delete=True), "videos[0]: missing 'video_uid'"),
    (_mutate("videos[0].clips[0].clip_uid", 7),
     "videos[0].clips[0].clip_uid: expected a string, got an integer"),
    (_mutate(f"{A}.annotation_uid", delete=True), f"{A}: missing 'annotation_uid'"),
    (_mutate(f"{A}.annotation_uid", None), f"{A}: 'annotation_uid' is null"),
    (_mutate(f"{A}.annotation_uid", "a0"), f"{A}: duplicate annotation_uid 'a0' in clip 'c0'"),
    (_mutate(f"{A}.language_queries", "x"),
     f"{A}.language_queries: expected a list, got a string"),
    (_mutate(f"{Q}.clip_end_sec", delete=True),
     f"{Q}: has only one of 'clip_start_sec' and 'clip_end_sec'"),
    (_mutate(f"{Q}.clip_end_sec", 0.5), f"{Q}: 'clip_end_sec' (0.5) is before 'clip_start_sec'"),
    (_mutate(f"{Q}.clip_start_sec", "1.0"),
     f"{Q}.clip_start_sec: expected a finite number, got a string"),
    (_mutate(f"{Q}.clip_start_sec", float("nan")),
     f"{Q}.clip_start_sec: expected a finite number, got nan"),
    (_mutate(f"{Q}.clip_start_sec", True),
     f"{Q}.clip_start_sec: expected a finite number, got a boolean"),
    (_mutate(f"{Q}.query", ["where"]), f"{Q}.query: expected a string, got a list"),
    (_mutate(f"{Q}.template", 1), f"{Q}.template: expected a string, got an integer"),
    (_mutate("videos[0].clips[0]", {"clip_uid": "c0", "annotations": []}),
     "videos[0].clips[0]: missing 'video_start_sec'/'video_end_sec' and"),
])
def test_schema_errors_are_one_line_with_file_and_path(tmp_path, mutate, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(mutate(copy.deepcopy(v2_file()))))
    with pytest.raises(AnnotationError) as info:
        load_queries(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {message}")
    assert "\n" not in text


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ('{"videos": [', "not valid JSON: Expecting value: line 1 column 13"),
    (b"\xff\xfe{}", "not UTF-8 text \\(byte 0xff at offset 0\\)"),
])
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "nlq.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(AnnotationError, match=f"^{path}: {message}"):
        load_queries(path)


def test_directory_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match=f"^{tmp_path}: cannot read"):
        load_queries(tmp_path)


def test_round_trip_through_the_writer(tmp_path):
    table = parse_queries(v2_file(), "nlq.json")
    path = tmp_path / "out.json"
    write_queries(path, table.queries)
    again = load_queries(path)
    assert again.queries == table.queries
    assert again.problems == table.problems
    assert again.clip_uids == ("c0", "c2")  # clips without queries cannot be written
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def _query(idx: int, answer=(1.0, 2.0), **kw) -> Query:
    fields = dict(clip_uid="c", video_uid="v", annotation_uid="a", query_idx=idx, text="q",
                  template=None, clip_window=(10.0, 20.0), answer=answer,
                  answer_video=None if answer is None else (11.0, 12.0))
    return Query(**{**fields, **kw})


def test_writer_keeps_unannotated_queries_unannotated():
    queries = (_query(0, answer=None), _query(1))
    assert parse_queries(to_nlq_json(queries), "x").queries == queries


def test_writer_without_video_answer_lets_the_reader_derive_it():
    [q] = parse_queries(to_nlq_json([_query(0, answer_video=None)]), "x").queries
    assert (q.answer, q.answer_video) == ((1.0, 2.0), (11.0, 12.0))


@pytest.mark.parametrize(("queries", "message"), [
    ((_query(0), _query(2)), r"query_idx values \[0, 2\] are not 0..1"),
    ((_query(0), _query(0)), r"query \('c', 'a', 0\) appears twice"),
    ((_query(0), _query(1, clip_window=(0.0, 20.0))), "clip window differs"),
    ((_query(0), _query(1, video_uid="w")), "video or clip window differs"),
])
def test_writer_rejects_inconsistent_queries(queries, message):
    with pytest.raises(ValueError, match=message):
        to_nlq_json(queries)


windows = st.tuples(st.floats(0, 1e4, allow_subnormal=False),
                    st.floats(0, 100, allow_subnormal=False)).map(lambda w: (w[0], w[0] + w[1]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["c0", "c1"]), st.sampled_from(["a0", "a1"]),
                          st.text(max_size=12), windows), max_size=12))
def test_round_trip_property(rows):
    """Any query list grouped per clip and annotation survives writing and reading exactly."""
    counters: dict[tuple[str, str], int] = {}
    queries = []
    for clip, ann, text, answer in rows:
        idx = counters[clip, ann] = counters.get((clip, ann), -1) + 1
        queries.append(Query(clip, f"v-{clip}", ann, idx, text if text.strip() else "", "T",
                             (5.0, 1e5), answer, (answer[0] + 5.0, answer[1] + 5.0)))
    table = parse_queries(json.loads(json.dumps(to_nlq_json(queries))), "x")
    assert sorted(table.queries, key=lambda q: q.key) == sorted(queries, key=lambda q: q.key)


@needs_real_val
def test_real_val_file():
    table = load_queries(REAL_VAL)
    assert len(table.clip_uids) == len(set(table.clip_uids)) == 415
    assert len(table) == 4554
    assert len(table.problems) == 2
    assert all(p.reason == "empty or missing query text" for p in table.problems)
    assert len(table.with_text()) == 4552
    assert all(q.answer is not None and q.answer[0] <= q.answer[1] for q in table)
    assert len({q.key for q in table}) == 4554


@needs_real_val
def test_real_val_round_trip(tmp_path):
    table = load_queries(REAL_VAL)
    path = tmp_path / "val_copy.json"
    write_queries(path, table.queries)
    assert load_queries(path).queries == table.queries
