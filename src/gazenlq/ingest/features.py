"""Ego4D pre-extracted features (+ optional gaze CSVs) -> one feature store per video.

Each source is a directory of ``<uid>.pt`` files (one per video or clip uid), each a 2-D
float tensor ``[T, D]`` on the Ego4D grid (30 fps, 32-frame windows, stride 16). Grounding
sources are concatenated along D, in the order given, into ``video_features``; gaze-estimator
sources likewise into ``gaze_features``. A uid lacking a file in some source is reported as
"missing" and not written.

Loading is safe: ``torch.load(weights_only=True)`` never runs pickled code. A file holds a
tensor, or a dict with exactly one tensor value; anything else, a rank other than 2, a
non-float dtype, an empty tensor or NaN / inf is refused naming the file.

Reconciliation: every source starts its first window at frame 0 on the same stride; they
differ only in how they treat the incomplete tail (dropped or padded windows). The store
therefore keeps the first ``T = min`` steps of every source (the longer ones lose their
last steps), and refuses a video whose sources differ by more than ``max_length_diff``
steps (default 2), naming the shortest and longest files: a larger gap means different
videos, clip versus video features, or another grid. The lengths are recorded in
``extra.ingest.source_steps``.

Duration: the frame count is not in the feature files, so ``duration_s`` is the shortest
video that has ``T`` windows, ``(stride * (T - 1) + window) / fps`` (then
``grid.num_steps(duration_s) == T``).

Resume: ``extra.ingest.fingerprint`` hashes the ingest version, dtype, source names and
each input's file name, size and mtime. A rerun skips a valid store with the same
fingerprint, redoes a missing, incomplete or damaged one, and refuses to replace a valid
store written from other inputs unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazenlq.errors import GazeNLQError, MissingDependencyError, StoreError
from gazenlq.gaze.heatmap import step_maps_and_types
from gazenlq.ingest.gaze_csv import TIME_COLUMN, frame_gaze, read_gaze_csv
from gazenlq.store import FeatureStore, StoreWriter, store_path
from gazenlq.store.schema import DEFAULT_CHUNK_STEPS
from gazenlq.timegrid import EGO4D
from gazenlq.workers import process_pool, stopped_on_error

INGEST_VERSION = 1
"""Bumped when the conversion changes, so older stores are not mistaken for current ones."""
DEFAULT_MAX_LENGTH_DIFF = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


@dataclass(frozen=True)
class Source:
    """One feature extractor: a name recorded in the store and a directory of ``.pt`` files."""

    name: str
    directory: Path

    @classmethod
    def parse(cls, spec: str) -> Source:
        """``NAME=DIR`` -> Source (the directory must exist)."""
        name, sep, directory = spec.partition("=")
        if not sep or not _NAME.fullmatch(name) or not directory:
            raise GazeNLQError(f"feature source {spec!r}: expected NAME=DIR, NAME made of "
                               "letters, digits and _.+-")
        source = cls(name, Path(directory))
        if not source.directory.is_dir():
            raise GazeNLQError(f"{directory}: no such directory (feature source {name!r})")
        return source

    def files(self) -> dict[str, Path]:
        """``uid -> path`` of the source's ``.pt`` files."""
        found = {p.stem: p for p in sorted(self.directory.glob("*.pt"))}
        if not found:
            raise GazeNLQError(f"{self.directory}: no .pt feature files (source {self.name!r})")
        return found


def load_features(path: str | os.PathLike) -> np.ndarray:
    """One Ego4D feature file -> ``[T, D]`` float array, checked; errors name the file."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("reading .pt feature files needs torch: "
                                     "pip install 'gazenlq[train]'") from None
    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. "unusual pickle protocol": one-line errors only
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GazeNLQError(f"{path}: not a plain tensor file, refused by weights_only loading "
                           f"(which runs no pickled code): {_unpickling_detail(exc)}") from None
    except Exception as exc:  # torch raises many types for foreign or damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise GazeNLQError(f"{path}: not a tensor file, cannot load it "
                           f"({type(exc).__name__}: {first})") from None
    if isinstance(obj, dict):
        tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise GazeNLQError(f"{path}: dict with {len(tensors)} tensors {tensors[:4]}, "
                               "expected exactly one")
        obj = obj[tensors[0]]
    if not isinstance(obj, torch.Tensor):
        raise GazeNLQError(f"{path}: holds a {type(obj).__name__}, expected a tensor [T, D] "
                           "or a dict with one tensor")
    if obj.ndim != 2 or obj.numel() == 0:
        raise GazeNLQError(f"{path}: tensor has shape {tuple(obj.shape)}, expected a "
                           "non-empty 2-D [T, D]")
    if not obj.is_floating_point():
        raise GazeNLQError(f"{path}: tensor has dtype {obj.dtype}, expected floating point")
    data = obj.detach()
    data = (data.float() if data.dtype == torch.bfloat16 else data).numpy()
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        raise GazeNLQError(f"{path}: NaN or inf at step {int(np.argmax(bad))}")
    return data


def _unpickling_detail(exc: Exception) -> str:
    """The specific line of torch's multi-paragraph weights_only refusal."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    detail = [ln for ln in lines if ln and not ln.startswith(_TORCH_BOILERPLATE)]
    return (detail or ["not a plain tensor file"])[0][:160]


def reconcile(lengths: dict[Path, int], max_diff: int = DEFAULT_MAX_LENGTH_DIFF) -> int:
    """Steps kept for one video: the shortest source, if all lie within ``max_diff`` steps."""
    shortest = min(lengths, key=lengths.__getitem__)
    longest = max(lengths, key=lengths.__getitem__)
    diff = lengths[longest] - lengths[shortest]
    if diff > max_diff:
        raise GazeNLQError(f"{longest}: {lengths[longest]} steps, but {shortest} has "
                           f"{lengths[shortest]} ({diff} apart, more than {max_diff}): not the "
                           "same video on the same grid?")
    return lengths[shortest]


@dataclass(frozen=True)
class VideoJob:
    """Everything needed to write one video's store (picklable, for worker processes)."""

    video_uid: str
    video_files: tuple[tuple[str, Path], ...]
    gaze_files: tuple[tuple[str, Path], ...]
    gaze_csv: Path | None
    path: Path
    dtype: str = "float16"
    max_length_diff: int = DEFAULT_MAX_LENGTH_DIFF

    def fingerprint(self) -> str:
        """Hash of the inputs (names, sizes, mtimes) and of the conversion settings."""
        def stat(p: Path) -> list:
            s = p.stat()
            return [p.name, s.st_size, s.st_mtime_ns]

        doc = {"version": INGEST_VERSION, "dtype": self.dtype,
               "video": [[n, *stat(p)] for n, p in self.video_files],
               "gaze": [[n, *stat(p)] for n, p in self.gaze_files],
               "gaze_csv": stat(self.gaze_csv) if self.gaze_csv else None}
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IngestResult:
    """Outcome for one uid: ``written``, ``skipped`` (already current) or ``missing``."""

    video_uid: str
    status: str
    steps: int | None = None
    video_dim: int | None = None
    gaze_dim: int | None = None
    gaze: bool = False
    missing_sources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"video_uid": self.video_uid, "status": self.status, "steps": self.steps,
                "video_dim": self.video_dim, "gaze_dim": self.gaze_dim, "gaze": self.gaze,
                "missing_sources": list(self.missing_sources)}


def _result(store: FeatureStore, status: str) -> IngestResult:
    return IngestResult(store.info.video_uid, status, store.num_steps,
                        store.dim("video_features"), store.dim("gaze_features"),
                        store.has_gaze_maps)


def _current(job: VideoJob, overwrite: bool) -> IngestResult | None:
    """The skipped result when ``job.path`` already holds this job's store, else None."""
    if not job.path.exists():
        return None
    try:
        store = FeatureStore.open(job.path)
    except StoreError:
        return None  # interrupted or damaged: write it again
    if overwrite:
        return None
    recorded = store.extra.get("ingest")
    if isinstance(recorded, dict) and recorded.get("fingerprint") == job.fingerprint():
        return _result(store, "skipped")
    raise GazeNLQError(f"{job.path}: exists but was written from other inputs or sources; "
                       "pass --overwrite to replace it")


def plan_ingest(video_sources: Sequence[Source], gaze_sources: Sequence[Source], out: Path, *,
                gaze_dir: Path | None = None, overwrite: bool = False, dtype: str = "float16",
                max_length_diff: int = DEFAULT_MAX_LENGTH_DIFF,
                ) -> tuple[list[VideoJob], list[IngestResult]]:
    """Jobs to run (stores ``out/<uid>.zarr``), and the results already known (skipped or
    missing uids); nothing is written."""
    if out.exists() and not out.is_dir():
        raise GazeNLQError(f"{out}: exists and is not a directory")
    if not video_sources or not gaze_sources:
        raise GazeNLQError("need at least one video source and one gaze source")
    names = [s.name for s in (*video_sources, *gaze_sources)]
    if len(set(names)) != len(names):
        raise GazeNLQError(f"feature source names must be unique, got {names}")
    if gaze_dir is not None and not gaze_dir.is_dir():
        raise GazeNLQError(f"{gaze_dir}: no such directory (gaze CSVs)")
    files = {s.name: s.files() for s in (*video_sources, *gaze_sources)}
    csvs = {p.stem: p for p in sorted(gaze_dir.glob("*.csv"))} if gaze_dir else {}
    if gaze_dir is not None and not csvs:
        raise GazeNLQError(f"{gaze_dir}: no .csv gaze files (expected <video_uid>.csv)")
    jobs, known = [], []
    for uid in sorted(set().union(*files.values())):
        missing = tuple(n for n, f in files.items() if uid not in f)
        if missing:
            known.append(IngestResult(uid, "missing", missing_sources=missing))
            continue
        job = VideoJob(uid, tuple((s.name, files[s.name][uid]) for s in video_sources),
                       tuple((s.name, files[s.name][uid]) for s in gaze_sources),
                       csvs.get(uid), store_path(out, uid), dtype, max_length_diff)
        done = _current(job, overwrite)
        if done:
            known.append(done)
        else:
            jobs.append(job)
    if len(jobs) + sum(r.status == "skipped" for r in known) == 0:
        raise GazeNLQError(f"no uid has a .pt file in every source ({', '.join(names)})")
    return jobs, known


def _check_range(path: Path, data: np.ndarray, dtype: str) -> None:
    limit = float(np.finfo(dtype).max)
    peak = float(np.abs(data).max())
    if peak > limit:
        raise GazeNLQError(f"{path}: values up to {peak:.3g} overflow {dtype}; "
                           "store float32 instead")


def _concat(arrays: list[np.ndarray], start: int, stop: int) -> np.ndarray:
    return np.concatenate([a[start:stop] for a in arrays], axis=1)


def ingest_video(job: VideoJob) -> IngestResult:
    """Load, check and reconcile one video's sources (+ gaze CSV) and write its store."""
    grid, chunk = EGO4D, DEFAULT_CHUNK_STEPS
    data = {p: load_features(p) for _, p in (*job.video_files, *job.gaze_files)}
    for p, a in data.items():
        _check_range(p, a, job.dtype)
    steps = reconcile({p: len(a) for p, a in data.items()}, job.max_length_diff)
    video = [data[p] for _, p in job.video_files]
    gaze = [data[p] for _, p in job.gaze_files]
    frames = None
    if job.gaze_csv is not None:
        frames = frame_gaze(read_gaze_csv(job.gaze_csv), grid.step_frames(steps - 1)[1],
                            grid.fps)
    extra = {"ingest": {
        "fingerprint": job.fingerprint(),
        "files": {n: p.name for n, p in (*job.video_files, *job.gaze_files)},
        "source_steps": {n: len(data[p]) for n, p in (*job.video_files, *job.gaze_files)},
        "gaze_csv": job.gaze_csv.name if job.gaze_csv else None,
        "gaze_time_column": TIME_COLUMN if job.gaze_csv else None,
    }}
    dims = sum(a.shape[1] for a in video), sum(a.shape[1] for a in gaze)
    with StoreWriter(job.path, video_uid=job.video_uid, video_dim=dims[0], gaze_dim=dims[1],
                     grid=grid, video_sources=tuple(n for n, _ in job.video_files),
                     gaze_sources=tuple(n for n, _ in job.gaze_files),
                     with_gaze_maps=frames is not None, dtype=job.dtype, chunk_steps=chunk,
                     overwrite=True, extra_attrs=extra) as writer:
        for start in range(0, steps, chunk):
            stop = min(start + chunk, steps)
            maps, types = (step_maps_and_types(*frames, grid, start, stop - start)
                           if frames is not None else (None, None))
            writer.append(_concat(video, start, stop), _concat(gaze, start, stop), maps, types)
    return IngestResult(job.video_uid, "written", steps, dims[0], dims[1], frames is not None)


def run_jobs(jobs: Sequence[VideoJob], *, workers: int = 1,
             on_video: Callable[[IngestResult], None] | None = None) -> list[IngestResult]:
    """Run ``jobs`` serially or in ``workers`` spawned processes (torch is not fork-safe);
    the first error stops the run (finished stores stay, so a rerun resumes)."""
    results = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(ingest_video(job))
            if on_video:
                on_video(results[-1])
        return results
    with process_pool(min(workers, len(jobs))) as pool, stopped_on_error(pool):
        futures = [pool.submit(ingest_video, job) for job in jobs]
        for fut in as_completed(futures):
            results.append(fut.result())
            if on_video:
                on_video(results[-1])
    return results

