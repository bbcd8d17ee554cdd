"""What searches return: moments, per-query results with score timelines, and each call's
result object carrying its own timings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from gazenlq.nlq.annotations import Query
from gazenlq.nlq.submission import Entry, write_submission


@dataclass(frozen=True)
class Moment:
    """One answer: a window of a video (or of an NLQ clip) in seconds, with its score."""

    video: str
    start_s: float
    end_s: float
    score: float


@dataclass
class Timings:
    """Seconds spent per stage by one call (``--explain``); ``total`` is its wall time."""

    text: float = 0.0
    io: float = 0.0
    video_model: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0
    ground_model: float = 0.0
    postprocess: float = 0.0
    coarse: float = 0.0
    total: float = 0.0
    windows: int = 0
    cached_windows: int = 0
    fine_steps: int = 0
    """Steps the fine model saw (each query's regions, or every window)."""

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Timeline:
    """A query's best per-step probability over one video or clip, against seconds."""

    seconds: np.ndarray
    score: np.ndarray


@dataclass
class QueryResult:
    """The ranked moments of one query over every searched video."""

    query: str
    moments: list[Moment]
    timelines: dict[str, Timeline] = field(default_factory=dict)
    """Per video (or clip): the score timeline, when asked for (plots)."""


@dataclass
class SearchResult:
    """What :meth:`SearchEngine.search` found: one :class:`QueryResult` per query, in order
    (iterable, indexable), and the call's timings."""

    results: list[QueryResult]
    timings: Timings
    stores: list[Path]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> QueryResult:
        return self.results[i]


@dataclass
class NLQResult:
    """Answers to an Ego4D NLQ annotation file: submission entries (clip seconds), the same
    answers as :class:`QueryResult` (``video`` is the clip), and the call's timings."""

    entries: list[Entry]
    results: list[QueryResult]
    queries: list[Query]
    timings: Timings

    @property
    def clips(self) -> int:
        return len({q.clip_uid for q in self.queries})

    def write_submission(self, path: str | os.PathLike) -> None:
        """Write the official Ego4D NLQ submission file (atomically)."""
        write_submission(path, self.entries)
