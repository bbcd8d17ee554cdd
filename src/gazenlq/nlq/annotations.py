"""Ego4D NLQ annotation ingest and writing: the JSON file <-> the project's query table.

Reads both published layouts (``videos -> clips -> annotations -> language_queries``): v2,
where a clip has its window inside the video (``video_start_sec`` / ``video_end_sec``) and
clip seconds start at 0, and v1 / minimal files whose clips only have ``clip_start_sec`` /
``clip_end_sec``. Test files without answers (no ``clip_start_sec`` / ``clip_end_sec`` on the
queries) give queries whose answer windows are ``None``.

Queries whose text is empty or missing (2 in the v2 val file) stay in the table with
``text == ""``: the official evaluator scores them, so dropping them would change the
metric. They are listed in :attr:`QueryTable.problems`; :meth:`QueryTable.with_text` gives
the queries a text model can use.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from gazenlq.atomic import write_json_atomic
from gazenlq.errors import AnnotationError

Window = tuple[float, float]


class QueryKey(NamedTuple):
    """How the official evaluator identifies a query."""

    clip_uid: str
    annotation_uid: str
    query_idx: int


@dataclass(frozen=True)
class Query:
    """One language query with its clip and (when annotated) its answer window."""

    clip_uid: str
    video_uid: str
    annotation_uid: str
    query_idx: int
    """Index of the query inside its annotation's ``language_queries``."""
    text: str
    """The question; ``""`` when the file has none (reported as a problem)."""
    template: str | None
    clip_window: Window
    """The clip inside its video, in video seconds."""
    answer: Window | None
    """Answer window in clip seconds (what the evaluator scores); ``None`` if unannotated."""
    answer_video: Window | None
    """Answer window in video seconds; ``None`` if unannotated."""

    @property
    def key(self) -> QueryKey:
        return QueryKey(self.clip_uid, self.annotation_uid, self.query_idx)

    @property
    def clip_duration_s(self) -> float:
        return self.clip_window[1] - self.clip_window[0]


@dataclass(frozen=True)
class Problem:
    """A query kept in the table but unusable for some purpose, and why."""

    key: QueryKey
    path: str
    reason: str


@dataclass(frozen=True)
class QueryTable:
    """All queries of an annotation file in file order, its clips and the problems found."""

    source: str
    queries: tuple[Query, ...]
    clip_uids: tuple[str, ...]
    """Every clip in the file, including clips without annotations."""
    problems: tuple[Problem, ...] = ()

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    def by_key(self) -> dict[QueryKey, Query]:
        return {q.key: q for q in self.queries}

    def with_text(self) -> tuple[Query, ...]:
        """The queries that have a non-empty question."""
        return tuple(q for q in self.queries if q.text)


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a finite number", lambda v: isinstance(v, int | float)
               and not isinstance(v, bool) and math.isfinite(v)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
}


class JsonChecker:
    """Typed access to parsed JSON; a mismatch raises a one-line error naming file and path."""

    def __init__(self, source: str | os.PathLike[str]) -> None:
        self.source = str(source)

    def fail(self, path: str, problem: str) -> NoReturn:
        raise AnnotationError(f"{self.source}: {path or 'top level'}: {problem}")

    def check(self, value: Any, path: str, kind: str) -> Any:
        """Return ``value`` if it is of ``kind`` (str, int, number, list, dict)."""
        name, ok = _KINDS[kind]
        if not ok(value):
            self.fail(path, f"expected {name}, got {_describe(value)}")
        return value

    def get(self, obj: dict[str, Any], key: str, path: str, kind: str,
            *, optional: bool = False) -> Any:
        """``obj[key]`` checked against ``kind``; ``None`` if absent (or null) and ``optional``."""
        value = obj.get(key)
        if value is None:
            if optional:
                return None
            self.fail(path, f"missing '{key}'" if key not in obj else f"'{key}' is null")
        return self.check(value, _join(path, key), kind)

    def items(self, obj: dict[str, Any], key: str, path: str) -> Iterator[tuple[str, Any]]:
        """``(path, element)`` for each element of the list ``obj[key]``."""
        for i, item in enumerate(self.get(obj, key, path, "list")):
            yield f"{_join(path, key)}[{i}]", item

    def window(self, obj: dict[str, Any], start: str, end: str, path: str) -> Window | None:
        """``(obj[start], obj[end])`` in seconds; ``None`` if both are absent."""
        s = self.get(obj, start, path, "number", optional=True)
        e = self.get(obj, end, path, "number", optional=True)
        if s is None and e is None:
            return None
        if s is None or e is None:
            self.fail(path, f"has only one of '{start}' and '{end}'")
        if e < s:
            self.fail(path, f"'{end}' ({e}) is before '{start}' ({s})")
        return float(s), float(e)


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file as str: UTF-8, a byte-order mark dropped; a missing or unreadable file or
    bytes that are not UTF-8 are a one-line error naming the file and the offset."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                              f"{exc.start}); save it as UTF-8") from None


def parse_json(text: str, path: str | os.PathLike[str]) -> Any:
    """Parse JSON text read from ``path``; JSON Lines (one object per line, the layout some
    NLQ codebases reformat annotations into) is refused by name, not misread."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _json_lines(text):
            raise AnnotationError(f"{path}: JSON Lines (one object per line), not an Ego4D NLQ "
                                  "JSON file ({'videos': [...]}); give the official "
                                  "annotation file") from None
        raise AnnotationError(f"{path}: not valid JSON: {exc}") from None


def _json_lines(text: str) -> bool:
    try:
        return all(isinstance(json.loads(line), dict) for line in text.splitlines()
                   if line.strip())
    except json.JSONDecodeError:
        return False


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a one-line error."""
    return parse_json(read_text(path), path)


def read_query_file(path: str | os.PathLike[str]) -> QueryTable | list[str]:
    """A query file, recognised by its content (not its name): an Ego4D NLQ JSON file as a
    :class:`QueryTable`, else plain text as its non-empty lines, one question each."""
    text = read_text(path)
    if text.lstrip()[:1] in ("{", "["):
        return parse_queries(parse_json(text, path), source=str(path))
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_queries(path: str | os.PathLike[str]) -> QueryTable:
    """Read an Ego4D NLQ annotation file (v1 or v2, annotated or not) into a :class:`QueryTable`."""
    return parse_queries(read_json(path), source=str(path))


def parse_queries(data: Any, source: str) -> QueryTable:
    """Build the query table from parsed NLQ JSON; ``source`` names the file in errors."""
    js = JsonChecker(source)
    js.check(data, "", "dict")
    queries: list[Query] = []
    clip_uids: list[str] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], str] = {}
    for vpath, video in js.items(data, "videos", ""):
        js.check(video, vpath, "dict")
        video_uid = js.get(video, "video_uid", vpath, "str")
        for cpath, clip in js.items(video, "clips", vpath):
            js.check(clip, cpath, "dict")
            clip_uid = js.get(clip, "clip_uid", cpath, "str")
            clip_window = (js.window(clip, "video_start_sec", "video_end_sec", cpath)
                           or js.window(clip, "clip_start_sec", "clip_end_sec", cpath))
            if clip_window is None:
                js.fail(cpath, "missing 'video_start_sec'/'video_end_sec' "
                               "and 'clip_start_sec'/'clip_end_sec'")
            clip_uids.append(clip_uid)
            for apath, ann in js.items(clip, "annotations", cpath):
                js.check(ann, apath, "dict")
                ann_uid = js.get(ann, "annotation_uid", apath, "str")
                if (clip_uid, ann_uid) in seen:
                    js.fail(apath, f"duplicate annotation_uid {ann_uid!r} in clip {clip_uid!r} "
                                   f"(first at {seen[clip_uid, ann_uid]})")
                seen[clip_uid, ann_uid] = apath
                for idx, (qpath, lq) in enumerate(js.items(ann, "language_queries", apath)):
                    js.check(lq, qpath, "dict")
                    query = _parse_query(js, lq, qpath, QueryKey(clip_uid, ann_uid, idx),
                                         video_uid, clip_window)
                    if not query.text:
                        problems.append(Problem(query.key, qpath, "empty or missing query text"))
                    queries.append(query)
    return QueryTable(source, tuple(queries), tuple(clip_uids), tuple(problems))


def _parse_query(js: JsonChecker, lq: dict[str, Any], path: str, key: QueryKey,
                 video_uid: str, clip_window: Window) -> Query:
    answer = js.window(lq, "clip_start_sec", "clip_end_sec", path)
    answer_video = js.window(lq, "video_start_sec", "video_end_sec", path)
    text = js.get(lq, "query", path, "str", optional=True) or ""
    if answer is not None and answer_video is None:
        answer_video = (clip_window[0] + answer[0], clip_window[0] + answer[1])
    return Query(clip_uid=key.clip_uid, video_uid=video_uid, annotation_uid=key.annotation_uid,
                 query_idx=key.query_idx,
                 text=text if text.strip() else "",
                 template=js.get(lq, "template", path, "str", optional=True),
                 clip_window=clip_window, answer=answer,
                 answer_video=answer_video if answer is not None else None)


def to_nlq_json(queries: Iterable[Query], *, version: str = "2.0",
                description: str = "NLQ Annotations") -> dict[str, Any]:
    """The NLQ JSON of ``queries`` (v2 layout, grouped in first-seen order).

    Keys must be unique, each annotation's ``query_idx`` values exactly ``0..n-1`` and all
    queries of a clip must agree on its video and clip window, else ``ValueError``.
    """
    videos: dict[str, list[dict[str, Any]]] = {}
    clips: dict[str, tuple[Query, dict[str, dict[int, dict[str, Any]]]]] = {}
    for q in queries:
        if q.clip_uid not in clips:
            clips[q.clip_uid] = (q, {})
            videos.setdefault(q.video_uid, []).append({"clip_uid": q.clip_uid})
        first, annotations = clips[q.clip_uid]
        if (first.video_uid, first.clip_window) != (q.video_uid, q.clip_window):
            raise ValueError(f"query {tuple(q.key)}: video or clip window differs from "
                             f"query {tuple(first.key)} of the same clip")
        lqs = annotations.setdefault(q.annotation_uid, {})
        if q.query_idx in lqs:
            raise ValueError(f"query {tuple(q.key)} appears twice")
        lqs[q.query_idx] = _query_json(q)
    for clip_list in videos.values():
        for clip in clip_list:
            first, annotations = clips[clip["clip_uid"]]
            clip.update(video_start_sec=first.clip_window[0], video_end_sec=first.clip_window[1],
                        clip_start_sec=0.0, clip_end_sec=first.clip_duration_s,
                        annotations=[_annotation_json(first.clip_uid, ann_uid, lqs)
                                     for ann_uid, lqs in annotations.items()])
    return {"version": version, "description": description,
            "videos": [{"video_uid": vid, "clips": cl} for vid, cl in videos.items()]}


def write_queries(path: str | os.PathLike[str], queries: Iterable[Query], **kwargs: str) -> None:
    """Write ``queries`` as an NLQ annotation file (atomically); see :func:`to_nlq_json`."""
    write_json_atomic(path, to_nlq_json(queries, **kwargs))


def _query_json(q: Query) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if q.answer is not None:
        out.update(clip_start_sec=q.answer[0], clip_end_sec=q.answer[1])
    if q.answer is not None and q.answer_video is not None:
        out.update(video_start_sec=q.answer_video[0], video_end_sec=q.answer_video[1])
    out.update(template=q.template, query=q.text)
    return out


def _annotation_json(clip_uid: str, ann_uid: str, lqs: dict[int, dict[str, Any]]
                     ) -> dict[str, Any]:
    if sorted(lqs) != list(range(len(lqs))):
        raise ValueError(f"annotation {ann_uid!r} of clip {clip_uid!r}: query_idx values "
                         f"{sorted(lqs)} are not 0..{len(lqs) - 1}")
    return {"annotation_uid": ann_uid, "language_queries": [lqs[i] for i in range(len(lqs))]}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {bool: "a boolean", str: "a string", int: "an integer", float: "a number",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
