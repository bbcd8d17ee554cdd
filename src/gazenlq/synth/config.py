"""EgoSim's configuration: one dataclass, the difficulty knob and its presets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from gazenlq.timegrid import EGO4D, TimeGrid

GRID_SIDE = 4
"""The spatial gaze-estimator features are a GRID_SIDE x GRID_SIDE grid of cells."""


@dataclass(frozen=True)
class Difficulty:
    """How hard the world is to ground in (docs/synthetic-data.md, 'difficulty').

    clutter: mean number of distractor objects visible beside the handled one.
    noise: std of the i.i.d. per-step feature noise (concept vectors have norm 1).
    drift: std of the slow AR(1) drift added to every feature.
    gaze_off: probability that a fixation during an interaction lands off the handled object.
    hand_cue: strength of the hand cue at the handled object's cell (how predictable gaze is).
    text_align: share (0-1) of each concept direction that is a projection of the default
        text encoder's embedding of the concept's name (video-language features like
        EgoVLP's, which Ego4D NLQ models use); 0 makes the words' meaning unlearnable except
        by memorising.
    boundary: how much annotators disagree with the event on where its answer window lies
        (``queries.annotated``): the window's centre moves by ``boundary`` x the
        event's length (std) and its length is scaled by exp(``boundary`` x a standard
        normal), both truncated at 2 std. 0 makes the answer window the event itself.
    """

    clutter: float = 3.0
    noise: float = 0.2
    drift: float = 0.2
    gaze_off: float = 0.2
    hand_cue: float = 0.8
    text_align: float = 1.0
    boundary: float = 0.3


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(clutter=1.5, noise=0.1, drift=0.1, gaze_off=0.1, hand_cue=1.0,
                       boundary=0.0),
    "default": Difficulty(),
    "hard": Difficulty(clutter=6.0, noise=0.5, drift=0.5, gaze_off=0.35, hand_cue=0.6,
                       text_align=0.0),
}


QUERY_SCOPES = ("clip", "session")
LATER_FIELDS = {"query_scope": "clip", "session_queries": 100}
LATER_DIFFICULTY = {"boundary": 0.0}
"""Difficulty knobs added after the first release, at the value that reproduces the worlds
made before them (left out of the config's JSON there, read back when missing)."""


@dataclass(frozen=True)
class EgoSimConfig:
    """Everything that determines an EgoSim dataset; equal configs give identical data."""

    seed: int = 0
    sessions: int = 200
    video_dim: int = 256
    cell_dim: int = 32
    gaze_fraction: float = 0.5
    """Share of sessions recorded with an eye tracker (ground-truth gaze maps)."""
    session_hours: float | None = None
    """Fixed session length (long-video benchmarks); None samples Ego4D-like clip layouts."""
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    difficulty: Difficulty = field(default_factory=Difficulty)
    grid: TimeGrid = EGO4D
    query_scope: str = "clip"
    """``clip``: Ego4D's layout, queries per clip, each answer unique in its clip;
    ``session`` (long-video benchmarks): one clip per session, the whole of it, with
    ``session_queries`` queries whose answers are unique in the whole session."""
    session_queries: int = 100

    def __post_init__(self) -> None:
        if self.query_scope not in QUERY_SCOPES:
            raise ValueError(f"query_scope must be one of {', '.join(QUERY_SCOPES)}, got "
                             f"{self.query_scope!r}")

    @property
    def gaze_dim(self) -> int:
        return GRID_SIDE * GRID_SIDE * self.cell_dim

    def with_difficulty(self, name: str) -> EgoSimConfig:
        return replace(self, difficulty=DIFFICULTIES[name])

    def to_dict(self) -> dict:
        """The config as JSON; fields added after the first release are left out at their
        defaults (difficulty knobs at the value that reproduces the older worlds), so that
        older datasets keep their fingerprint."""
        d = asdict(self)
        for name, default in LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        for name, before in LATER_DIFFICULTY.items():
            if d["difficulty"][name] == before:
                del d["difficulty"][name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EgoSimConfig:
        d = dict(d)
        # manifests older than the text_align knob describe unaligned worlds
        d["difficulty"] = Difficulty(**{"text_align": 0.0, **LATER_DIFFICULTY,
                                        **d["difficulty"]})
        d["grid"] = TimeGrid(**d["grid"])
        d["split"] = tuple(d["split"])
        return cls(**d)

    def fingerprint(self) -> str:
        """Hash of everything that shapes one session's data (not the session count)."""
        d = self.to_dict()
        d.pop("sessions")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
