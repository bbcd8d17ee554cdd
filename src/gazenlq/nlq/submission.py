"""The Ego4D NLQ challenge submission file: validated reading and atomic writing.

``{"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": [{"clip_uid",
"annotation_uid", "query_idx", "predicted_times": [[start_s, end_s], ...]}, ...]}``, windows
in clip seconds, ranked best first. Reading rejects what the official evaluator would crash
on or silently misread (empty or reversed windows, negative indices), with one-line errors
naming the file, the entry and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gazenlq.atomic import write_json_atomic
from gazenlq.nlq.annotations import JsonChecker, QueryKey, Window, read_json

VERSION = "1.0"
CHALLENGE = "ego4d_nlq_challenge"


@dataclass(frozen=True)
class Entry:
    """The ranked predicted windows (clip seconds) for one query."""

    clip_uid: str
    annotation_uid: str
    query_idx: int
    predicted_times: tuple[Window, ...]

    @property
    def key(self) -> QueryKey:
        return QueryKey(self.clip_uid, self.annotation_uid, self.query_idx)


def to_submission_json(entries: Iterable[Entry]) -> dict[str, Any]:
    """The submission object for ``entries``, in the given order."""
    return {"version": VERSION, "challenge": CHALLENGE, "results": [
        {"clip_uid": e.clip_uid, "annotation_uid": e.annotation_uid, "query_idx": e.query_idx,
         "predicted_times": [[float(s), float(t)] for s, t in e.predicted_times]}
        for e in entries]}


def write_submission(path: str | os.PathLike[str], entries: Iterable[Entry]) -> None:
    """Write a submission file atomically (temporary file + ``os.replace``), checked first
    by the rules reading applies: a file ``gaze-eval`` would reject is never written."""
    data = to_submission_json(entries)
    parse_submission(data, source=str(path))
    write_json_atomic(path, data)


def load_submission(path: str | os.PathLike[str]) -> list[Entry]:
    """Read and validate a submission file; any problem is a one-line ``AnnotationError``."""
    return parse_submission(read_json(path), source=str(path))


def parse_submission(data: Any, source: str) -> list[Entry]:
    """Validate a parsed submission object; ``source`` names the file in errors."""
    js = JsonChecker(source)
    js.check(data, "", "dict")
    for key, expected in (("version", VERSION), ("challenge", CHALLENGE)):
        if js.get(data, key, "", "str") != expected:
            js.fail(key, f"expected {expected!r}, got {data[key]!r}")
    return [_parse_entry(js, item, path) for path, item in js.items(data, "results", "")]


def _parse_entry(js: JsonChecker, item: Any, path: str) -> Entry:
    js.check(item, path, "dict")
    clip_uid = js.get(item, "clip_uid", path, "str")
    annotation_uid = js.get(item, "annotation_uid", path, "str")
    query_idx = js.get(item, "query_idx", path, "int")
    if query_idx < 0:
        js.fail(f"{path}.query_idx", f"expected a non-negative integer, got {query_idx}")
    windows = []
    for wpath, window in js.items(item, "predicted_times", path):
        js.check(window, wpath, "list")
        if len(window) != 2:
            js.fail(wpath, f"expected [start, end], got {len(window)} values")
        start, end = (js.check(v, f"{wpath}[{i}]", "number") for i, v in enumerate(window))
        if end < start:
            js.fail(wpath, f"end {end} is before start {start}")
        windows.append((float(start), float(end)))
    if not windows:
        js.fail(f"{path}.predicted_times", "is empty (at least one window is needed)")
    return Entry(clip_uid, annotation_uid, query_idx, tuple(windows))
