"""Statistics of an NLQ query table, to calibrate EgoSim against real Ego4D annotations."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from gazenlq.nlq.annotations import QueryTable


@dataclass(frozen=True)
class NLQStats:
    """Answer-window, clip-length, queries-per-clip and query-length statistics."""

    clips: int
    queries: int
    answer_p5_s: float
    answer_median_s: float
    answer_p95_s: float
    answer_le_1s: float
    clip_p5_s: float
    clip_median_s: float
    clip_p95_s: float
    queries_per_clip: float
    words_p5: float
    words_p95: float
    templates: int

    def to_dict(self) -> dict:
        return asdict(self)


def nlq_stats(table: QueryTable) -> NLQStats:
    """Compute :class:`NLQStats` over the annotated queries of ``table``."""
    answers = np.array([q.answer[1] - q.answer[0] for q in table if q.answer is not None])
    clips: dict[str, float] = {}
    per_clip: Counter[str] = Counter()
    for q in table:
        clips[q.clip_uid] = q.clip_window[1] - q.clip_window[0]
        per_clip[q.clip_uid] += 1
    words = np.array([len(q.text.split()) for q in table.with_text()])
    lengths = np.array(list(clips.values()))
    a5, a50, a95 = np.percentile(answers, [5, 50, 95])
    c5, c50, c95 = np.percentile(lengths, [5, 50, 95])
    return NLQStats(
        clips=len(clips), queries=len(table), answer_p5_s=float(a5),
        answer_median_s=float(a50), answer_p95_s=float(a95),
        answer_le_1s=float(np.mean(answers <= 1.0)), clip_p5_s=float(c5),
        clip_median_s=float(c50), clip_p95_s=float(c95),
        queries_per_clip=len(table) / max(1, len(clips)),
        words_p5=float(np.percentile(words, 5)), words_p95=float(np.percentile(words, 95)),
        templates=len({q.template for q in table}),
    )
