"""Search by what the wearer looked at (bundles with a looked-at head; gaze.md section 6).

The per-video graph gives every step a label embedding (``looked_at_emb``, cached in the
index with the other per-video outputs), the text graph a noun embedding (``noun_emb``). A
step's probability of looking at a queried noun is a softmax of its cosine similarities
with the noun and with the bundle's training vocabulary (``gaze.looked_at.label_probs``):
the vocabulary is what the noun competes with, so "bulb" wins only where the step looks
more like a bulb than like any other known object. Runs of steps above a threshold are the
moments (``gaze.looked_at.ranked_spans``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gazenlq.gaze.looked_at import label_probs

SAME_NOUN = 0.9
"""A vocabulary noun this close (cosine) to the queried one names the same thing ("bulb" for
"the bulb") and is left out of the classes the query competes with."""


def stitch(windows: Iterable[tuple[int, int, np.ndarray]], steps: int, dim: int
           ) -> np.ndarray:
    """``[steps, dim]`` float32 from overlapping windows ``(start, valid, [length, dim])``
    (in order): each step from the window whose middle it is nearest, i.e. a window owns
    its steps from the middle of its overlap with the previous one."""
    out = np.zeros((steps, dim), np.float32)
    prev_end = 0
    for start, valid, emb in windows:
        lo = start if start >= prev_end else (start + prev_end) // 2
        end = start + valid
        out[lo:end] = emb[lo - start:valid]
        prev_end = end
    return out


def classes_for(noun: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """``[C, D]``: the queried ``noun`` first, then the ``vocabulary`` nouns ``[V, D]`` that
    do not name the same thing (:data:`SAME_NOUN`)."""
    noun = np.asarray(noun, np.float32).reshape(1, -1)
    vocabulary = np.asarray(vocabulary, np.float32).reshape(-1, noun.shape[1])
    others = vocabulary[(vocabulary @ noun[0]) < SAME_NOUN]
    return np.concatenate([noun, others])


def track(step_emb: np.ndarray, noun: np.ndarray, vocabulary: np.ndarray, scale: float
          ) -> np.ndarray:
    """``[T]`` probability that each step looks at ``noun``."""
    return label_probs(step_emb, classes_for(noun, vocabulary), scale)[:, 0].astype(np.float32)
