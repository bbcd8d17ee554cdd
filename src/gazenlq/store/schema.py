"""Feature-store schema v1: array names, attributes and their validation (docs/feature-store.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from gazenlq.errors import StoreError
from gazenlq.timegrid import TimeGrid

SCHEMA = "gazenlq.feature-store"
SCHEMA_VERSION = 1

VIDEO = "video_features"
"""Grounding features ``[T, Dv]`` (e.g. EgoVLP / InternVideo)."""
GAZE_INPUT = "gaze_features"
"""Gaze-estimator input features ``[T, Dg]`` (e.g. Omnivore)."""
GAZE_MAPS = "gaze_maps"
"""Optional ground-truth gaze maps ``[T, 64, 64]``, each summing to 1."""
GAZE_TYPE = "gaze_type"
"""Per-step gaze type ``[T]`` (uint8 :class:`GazeType`), the validity mask of the gaze maps."""

FEATURE_ARRAYS = (VIDEO, GAZE_INPUT)
GAZE_ARRAYS = (GAZE_MAPS, GAZE_TYPE)
MAP_SIZE = 64
DEFAULT_CHUNK_STEPS = 512


class GazeType(IntEnum):
    """GLC's per-frame gaze categories; a step takes its frames' majority type."""

    UNTRACKED = 0
    FIXATION = 1
    SACCADE = 2
    TRUNCATED = 3


@dataclass(frozen=True)
class StoreInfo:
    """Attributes of one video's store: identity, time grid, length and feature provenance."""

    video_uid: str
    grid: TimeGrid
    duration_s: float
    num_steps: int
    video_sources: tuple[str, ...]
    gaze_sources: tuple[str, ...]
    schema_version: int = SCHEMA_VERSION

    def to_attrs(self, *, complete: bool) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            "video_uid": self.video_uid,
            "fps": self.grid.fps,
            "window_frames": self.grid.window,
            "stride_frames": self.grid.stride,
            "duration_s": self.duration_s,
            "num_steps": self.num_steps,
            "video_sources": list(self.video_sources),
            "gaze_sources": list(self.gaze_sources),
            "complete": complete,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: str) -> StoreInfo:
        """Parse and check group attributes; ``where`` names the store in error messages."""
        if attrs.get("schema") != SCHEMA:
            raise StoreError(f"{where}: not a gazenlq feature store (attribute 'schema' is "
                             f"{attrs.get('schema')!r}, expected {SCHEMA!r})")
        if not _attr(attrs, "complete", bool, where):
            raise StoreError(f"{where}: store is incomplete (its writer did not finish); "
                             "write it again")
        version = _attr(attrs, "schema_version", int, where)
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where}: schema version {version} is newer than this gazenlq "
                             f"supports ({SCHEMA_VERSION}); upgrade gazenlq")
        if version < 1:
            raise StoreError(f"{where}: invalid schema version {version}")
        try:
            grid = TimeGrid(_attr(attrs, "fps", float, where),
                            _attr(attrs, "window_frames", int, where),
                            _attr(attrs, "stride_frames", int, where))
        except ValueError as exc:
            raise StoreError(f"{where}: {exc}") from None
        info = cls(
            video_uid=_attr(attrs, "video_uid", str, where),
            grid=grid,
            duration_s=_attr(attrs, "duration_s", float, where),
            num_steps=_attr(attrs, "num_steps", int, where),
            video_sources=tuple(_attr(attrs, "video_sources", list, where)),
            gaze_sources=tuple(_attr(attrs, "gaze_sources", list, where)),
            schema_version=version,
        )
        if info.num_steps < 0 or info.duration_s < 0:
            raise StoreError(f"{where}: negative num_steps or duration_s")
        return info


def _attr(attrs: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in attrs:
        raise StoreError(f"{where}: missing attribute {key!r}")
    value = attrs[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise StoreError(f"{where}: attribute {key!r} is {type(value).__name__}, "
                         f"expected {kind.__name__}")
    return value
