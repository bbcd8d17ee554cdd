"""Ego4D downloads -> feature stores: .pt feature files (features.py), gaze CSVs (gaze_csv.py)."""

from gazenlq.ingest.features import (
    IngestResult,
    Source,
    VideoJob,
    ingest_video,
    load_features,
    plan_ingest,
    reconcile,
    run_jobs,
)
from gazenlq.ingest.gaze_csv import GazeSamples, frame_gaze, read_gaze_csv

__all__ = [
    "GazeSamples",
    "IngestResult",
    "Source",
    "VideoJob",
    "frame_gaze",
    "ingest_video",
    "load_features",
    "plan_ingest",
    "read_gaze_csv",
    "reconcile",
    "run_jobs",
]
