"""Post-processing settings: one dataclass, written by the exporter into the manifest and read
by the engine and the kernels (torch- and Numba-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

from gazenlq.scalars import as_count, as_f32


class Method(IntEnum):
    """How Soft-NMS decays the candidates around each emitted one (the extension's codes)."""

    HARD = 0  # score -> 0 when IoU >= iou_threshold
    LINEAR = 1  # score *= 1 - IoU when IoU >= iou_threshold
    GAUSSIAN = 2  # score *= exp(-IoU^2 / sigma), always

    @classmethod
    def parse(cls, value: Method | str | int) -> Method:
        """A member from itself, its name (any case) or its code."""
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        choices = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"method must be one of {choices} (or {[int(m) for m in cls]}), "
                         f"got {value!r}")


@dataclass(frozen=True)
class PostprocessConfig:
    """Post-processing settings; the defaults are GroundNLQ's (grounding.md section 5)."""

    score_threshold: float = 0.001  # keep probability > this, per level
    pre_nms_topk: int = 2000  # most probable points kept per level
    min_length: float = 0.001  # drop segments of length <= this, in steps
    method: Method | str = Method.GAUSSIAN
    sigma: float = 0.75
    iou_threshold: float = 0.1  # used by the hard and linear methods only
    min_score: float = 0.001
    top_k: int | None = 5
    voting_thresh: float | None = None  # None: no voting

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method.parse(self.method))
        as_f32(self.score_threshold, "score_threshold", low=0.0, high=1.0)
        as_count(self.pre_nms_topk, "pre_nms_topk")
        as_f32(self.min_length, "min_length", low=0.0)
        as_f32(self.sigma, "sigma", low=0.0, low_open=True)
        as_f32(self.iou_threshold, "iou_threshold", low=0.0, high=1.0)
        as_f32(self.min_score, "min_score", low=0.0)
        if self.top_k is not None:
            as_count(self.top_k, "top_k")
        if self.voting_thresh is not None:
            as_f32(self.voting_thresh, "voting_thresh", low=0.0, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the method by name), as the manifest stores it."""
        return {**asdict(self), "method": Method.parse(self.method).name.lower()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostprocessConfig:
        """From the manifest's JSON; unknown keys are refused (``ValueError``)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown post-processing settings: {', '.join(sorted(unknown))}")
        return cls(**d)
