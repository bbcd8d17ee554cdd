"""How a search runs (``SearchOptions``): window plan, batching, caching, and the mode."""

from __future__ import annotations

from dataclasses import dataclass

from gazenlq.bundle.trt import ROWS_PER_CALL

MODES = ("auto", "coarse", "exhaustive")


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs: window plan, batching, result count, caching."""

    top_k: int = 5
    window: int | None = None
    """Steps per model window (a multiple of the bundle's length multiple); default: the
    bundle's max length."""
    overlap: int = 256
    batch: int = ROWS_PER_CALL
    """Rows (window x query pairs) per call of the per-query graph, at most."""
    fuse_steps: int = 8192
    """Rows x window steps per call of the per-query graph, at most: bounds memory whatever
    the video's length (3 full-length windows, or more shorter ones)."""
    use_cache: bool = True
    write_cache: bool = True
    cache_dir: str | None = None
    """Where the per-video caches live (default: ``$GAZENLQ_CACHE_DIR``, else inside each
    local store, and the user's cache directory for stores addressed by URL); for libraries
    on read-only mounts or object storage (``engine.cache.cache_root``)."""
    prefetch: int = 2
    mode: str = "auto"
    """``coarse`` (coarse to fine: the fine model only on the best spans' regions),
    ``exhaustive`` (every window; the reference) or ``auto``: coarse wherever the bundle
    has a coarse stage and the searched steps exceed one window."""
    candidates: int = 8
    """Coarse to fine: spans per query whose regions the fine model grounds in (M)."""
    context: int = 16
    """Coarse to fine: steps of context either side of a span in its region (before the
    region is aligned to the bundle's length multiple). M and context were chosen on
    EgoSim's 10-hour sessions (docs/coarse-to-fine.md)."""
    ann_min_spans: int | None = None
    """Coarse to fine: search the library's spans approximately (faiss, the ``ann`` extra)
    once it holds this many; below, and always with 0, the search is exact. None: from
    ``gazenlq.engine.ann.ANN_MIN_SPANS`` (the measured crossover) when the extra is
    installed, else exact; N > 0 asks for ANN and needs the extra."""
