"""Deep validation of a feature store: metadata, then every chunk of every array."""

from __future__ import annotations

import os

from gazenlq.store.reader import FeatureStore
from gazenlq.store.schema import StoreInfo


def validate_store(path: str | os.PathLike, *, deep: bool = True) -> StoreInfo:
    """Check a store and return its info; raise :class:`StoreError` naming the first problem.

    Shallow: attributes, schema version, completeness, array presence, dtypes, shapes.
    Deep: also reads every chunk (corrupted, truncated or missing chunks; NaN / inf values).
    """
    store = FeatureStore.open(path)
    if deep:
        step = store.chunk_steps
        for name in sorted(store.group.array_keys()):
            for start in range(0, store.num_steps, step):
                store.read(name, start, min(start + step, store.num_steps))
    return store.info
