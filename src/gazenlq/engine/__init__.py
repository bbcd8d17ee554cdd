"""The search engine: bundles run by ONNX Runtime over feature stores, streaming and cached.

Imports no torch, by rule: numpy, zarr, onnxruntime, tokenizers and numba only; it imports
nothing from ``gazenlq.export`` or ``gazenlq.training`` (tests check the import graph and
``sys.modules`` after a search). The API::

    engine = SearchEngine.from_bundle("bundle/")      # or no path: the default bundle
    result = engine.search("videos/", ["where did I put the bulb"], top_k=5)
"""

from gazenlq.engine.options import SearchOptions
from gazenlq.engine.results import (
    Moment,
    NLQResult,
    QueryResult,
    SearchResult,
    Timeline,
    Timings,
)
from gazenlq.engine.runtime import RuntimeOptions
from gazenlq.engine.search import SearchEngine

__all__ = ["Moment", "NLQResult", "QueryResult", "RuntimeOptions", "SearchEngine",
           "SearchOptions", "SearchResult", "Timeline", "Timings"]
