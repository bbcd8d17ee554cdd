"""EgoSim's natural-language queries: templates in its own words, answered by interactions.

Each template picks an interaction whose key (object, verb + object, container, ...) is
unique in the clip, so every query has exactly one answer window. Template shares follow
the Ego4D NLQ v2 val mix (docs/synthetic-data.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from gazenlq.synth.timeline import Event
from gazenlq.synth.world import OBJECTS, PEOPLE, PLACES, VERBS


@dataclass(frozen=True)
class SynthQuery:
    """A query with its answer window in video seconds."""

    template: str
    text: str
    slot: str
    verb: str
    start_s: float
    end_s: float


def _name(i: int) -> str:
    return OBJECTS[i][0]


def _did(e: Event) -> str:
    """'I <past tense> the <object>' for an interaction."""
    if e.verb == "put_in":
        return f"I stored the {_name(e.obj)}"
    if e.verb == "receive":
        return f"I was handed the {_name(e.obj)}"
    return f"I {VERBS[e.verb][0]} the {_name(e.obj)}"


Picker = Callable[[list[Event], int, np.random.Generator], tuple[int, str, str, str] | None]


_UNIQUE: dict[tuple[int, Callable], set[int]] = {}
"""Unique-key events per (event list, key) while :func:`clip_queries` runs (a 10-hour
session's thousands of events would otherwise be rescanned for every candidate)."""


def _unique(events: list[Event], key: Callable[[Event], object | None]) -> set[int]:
    hit = _UNIQUE.get((id(events), key))
    if hit is None:
        keys = [key(e) for e in events]
        counts = Counter(k for k in keys if k is not None)
        hit = {i for i, k in enumerate(keys) if k is not None and counts[k] == 1}
        _UNIQUE[(id(events), key)] = hit
    return hit


def _action(e: Event):
    return (e.verb, e.obj, e.target) if e.obj >= 0 else None


def _pick_before_after(ev: list[Event], i: int, rng: np.random.Generator):
    b = ev[i]
    if b.obj < 0 or i not in _unique(ev, _action):
        return None
    before = rng.random() < 0.6
    span = range(i - 1, -1, -1) if before else range(i + 1, len(ev))
    seen: dict[int, int] = {}
    for j in span:  # nearest interaction with each other object, in the asked direction
        if ev[j].obj >= 0 and ev[j].obj != b.obj and ev[j].obj not in seen:
            seen[ev[j].obj] = j
    if not seen:
        return None
    a = int(rng.choice(sorted(seen)))
    word = "before" if before else "after"
    text = f"Where was the {_name(a)} {word} {_did(b)}?"
    return seen[a], text, _name(a), b.verb


def _simple(key: Callable[[Event], object | None], phrasings: tuple[str, ...],
            verb_form: int = 0) -> Picker:
    def pick(ev: list[Event], i: int, rng: np.random.Generator):
        if i not in _unique(ev, key):
            return None
        e = ev[i]
        fields = {
            "obj": _name(e.obj) if e.obj >= 0 else "",
            "plural": OBJECTS[e.obj][1] if e.obj >= 0 else "",
            "category": OBJECTS[e.obj][2] if e.obj >= 0 else "",
            "target": _name(e.target) if e.target >= 0 else "",
            "past": VERBS[e.verb][verb_form],
            "base": VERBS[e.verb][2],
            "place": PLACES[e.place],
            "person": PEOPLE[e.person] if e.person >= 0 else "",
        }
        text = str(rng.choice(phrasings)).format(**fields)
        slot = fields["target"] or fields["obj"] or fields["person"] or fields["place"]
        return i, text, slot, e.verb
    return pick


def _obj(e: Event):
    return e.obj if e.obj >= 0 else None


def _verb_obj(verbs: tuple[str, ...]):
    return lambda e: (e.verb, e.obj) if e.obj >= 0 and e.verb in verbs else None


# key, share in Ego4D NLQ v2 val, picker
TEMPLATES: tuple[tuple[str, float, Picker], ...] = (
    ("EgoSim: where was X before or after Y", 0.1647, _pick_before_after),
    ("EgoSim: where did I put X", 0.1592, _simple(_verb_obj(("put",)), (
        "Where did I put the {obj}?", "Where did I leave the {obj}?",
        "Where did I set down the {obj}?"))),
    ("EgoSim: where is X", 0.1212, _simple(_obj, (
        "Where is the {obj}?", "Where was the {obj}?", "Where can I find the {obj}?"))),
    ("EgoSim: what did I put in X", 0.1199, _simple(
        lambda e: e.target if e.verb == "put_in" else None, (
            "What did I put in the {target}?", "What did I place inside the {target}?"))),
    ("EgoSim: how many X did I Y", 0.0848, _simple(_verb_obj(("take", "put", "wash", "cut")), (
        "How many {plural} did I {base}?", "How many {plural} have I {past}?"))),
    ("EgoSim: in which room was X", 0.0788, _simple(_obj, (
        "In which room did I see the {obj}?", "In what room was the {obj}?"))),
    ("EgoSim: which X did I Y", 0.0769, _simple(
        lambda e: (e.verb, OBJECTS[e.obj][2]) if e.obj >= 0 and e.verb not in
        ("put_in", "receive") else None, ("Which {category} did I {base}?",))),
    ("EgoSim: what colour is X", 0.0729, _simple(_verb_obj(tuple(VERBS)), (
        "What colour was the {obj} I {past}?",))),
    ("EgoSim: state of X", 0.0518, _simple(_verb_obj(("open", "close")), (
        "Did I {base} the {obj}?", "When was the {obj} {past}?"))),
    ("EgoSim: who handed me X", 0.0253, _simple(_verb_obj(("receive",)), (
        "Who handed me the {obj}?", "Who gave me the {obj}?"))),
    ("EgoSim: who did I talk to in X", 0.0200, _simple(
        lambda e: e.place if e.verb == "talk" else None, (
            "Who did I talk to in the {place}?", "Who was I chatting with in the {place}?"))),
    ("EgoSim: where is my X", 0.0158, _simple(_obj, ("Where is my {obj}?",))),
    ("EgoSim: when did I talk to X", 0.0048, _simple(
        lambda e: e.person if e.verb == "talk" else None, (
            "When did I talk to the {person}?", "When did I speak with the {person}?"),
        verb_form=1)),
)
_WEIGHTS = np.array([w for _, w, _ in TEMPLATES]) / sum(w for _, w, _ in TEMPLATES)


ANNOTATOR_TRUNCATE = 2.0
"""Annotator disagreement is drawn from normals truncated at this many std."""


def annotated(q: SynthQuery, bounds: tuple[float, float], boundary: float,
              rng: np.random.Generator) -> SynthQuery:
    """``q`` with the answer window an annotator marks for its event ``[start_s, end_s]``.

    Real annotators disagree on where an answer starts and ends: the window's centre moves
    by ``boundary`` x the event's length (std) and its length is scaled by
    exp(``boundary`` x z), both normals truncated at :data:`ANNOTATOR_TRUNCATE` std, and the
    window is kept inside ``bounds`` (the clip). ``boundary`` 0 returns ``q`` as it is.
    """
    if boundary <= 0:
        return q
    length = q.end_s - q.start_s
    shift, scale = np.clip(rng.standard_normal(2), -ANNOTATOR_TRUNCATE, ANNOTATOR_TRUNCATE)
    centre = (q.start_s + q.end_s) / 2 + boundary * length * float(shift)
    half = length / 2 * float(np.exp(boundary * scale))
    return replace(q, start_s=max(bounds[0], centre - half),
                   end_s=min(bounds[1], centre + half))


def queries_per_clip(rng: np.random.Generator) -> int:
    """Ego4D-like query count per clip (mean ~11, 5th-95th percentile ~2-20)."""
    return int(np.clip(round(rng.gamma(3.0, 11.0 / 3.0)), 1, 30))


def clip_queries(events: list[Event], rng: np.random.Generator, want: int | None = None
                 ) -> list[SynthQuery]:
    """Queries for one clip's interactions (those entirely inside it), without repeats:
    ``want`` of them (default: an Ego4D-like count), fewer when the clip runs out of
    interactions whose key is unique in it. Every answer is unique in ``events``."""
    want = queries_per_clip(rng) if want is None else want
    try:
        return _queries(events, rng, want)
    finally:
        _UNIQUE.clear()


def _queries(events: list[Event], rng: np.random.Generator, want: int) -> list[SynthQuery]:
    out: list[SynthQuery] = []
    used: set[tuple[str, str]] = set()
    for _ in range(want * 10):
        if len(out) >= want or not events:
            break
        key, _w, picker = TEMPLATES[int(rng.choice(len(TEMPLATES), p=_WEIGHTS))]
        for i in rng.permutation(len(events)):  # first answerable interaction, random order
            picked = picker(events, int(i), rng)
            if picked is not None and (key, picked[1]) not in used:
                break
        else:
            continue
        j, text, slot, verb = picked
        used.add((key, text))
        out.append(SynthQuery(key, text, slot, verb, events[j].start_s, events[j].end_s))
    return out
