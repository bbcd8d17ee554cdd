"""gazenlq: gaze-augmented natural-language query search over long egocentric videos.

The main names are importable from here (resolved lazily, so ``import gazenlq`` stays
light)::

    from gazenlq import SearchEngine

    engine = SearchEngine.from_bundle("bundle/")  # or no path: the default bundle
    for answer in engine.search("videos/", ["where did I put the bulb"]):
        print(answer.query, answer.moments[:1])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "SearchEngine": "gazenlq.engine", "SearchOptions": "gazenlq.engine",
    "RuntimeOptions": "gazenlq.engine", "SearchResult": "gazenlq.engine",
    "NLQResult": "gazenlq.engine", "QueryResult": "gazenlq.engine", "Moment": "gazenlq.engine",
    "Timings": "gazenlq.engine", "FeatureStore": "gazenlq.store", "TimeGrid": "gazenlq.timegrid",
    "GazeNLQError": "gazenlq.errors", "load_queries": "gazenlq.nlq.annotations",
    "evaluate": "gazenlq.nlq.evaluation",
}
__all__ = ["__version__", *sorted(_NAMES)]


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'gazenlq' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
