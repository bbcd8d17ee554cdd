"""Per-video Zarr v3 feature stores, schema v1 (see docs/feature-store.md)."""

from gazenlq.store.paths import find_stores, is_store, store_path
from gazenlq.store.reader import FeatureStore, Window, plan_windows
from gazenlq.store.schema import (
    GAZE_INPUT,
    GAZE_MAPS,
    GAZE_TYPE,
    MAP_SIZE,
    SCHEMA_VERSION,
    VIDEO,
    GazeType,
    StoreInfo,
)
from gazenlq.store.validate import validate_store
from gazenlq.store.writer import StoreWriter

__all__ = [
    "GAZE_INPUT",
    "GAZE_MAPS",
    "GAZE_TYPE",
    "MAP_SIZE",
    "SCHEMA_VERSION",
    "VIDEO",
    "FeatureStore",
    "GazeType",
    "StoreInfo",
    "StoreWriter",
    "Window",
    "find_stores",
    "is_store",
    "plan_windows",
    "store_path",
    "validate_store",
]
