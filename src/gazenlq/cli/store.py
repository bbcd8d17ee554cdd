"""gaze-store: show and validate per-video Zarr feature stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, make_app, print_json, print_table, run

app = make_app("Inspect and validate gazenlq feature stores (Zarr v3, schema v1).")


@app.callback()
def _main(version: Annotated[bool, VERSION_OPTION] = False) -> None:
    """Inspect and validate gazenlq feature stores (Zarr v3, schema v1)."""


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A feature store, e.g. video.zarr.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a store's attributes and arrays (shape, dtype, chunks, size on disk)."""
    from gazenlq.store import FeatureStore

    store = FeatureStore.open(path)
    i = store.info
    arrays = []
    for name in sorted(store.group.array_keys()):
        a = store.group[name]
        arrays.append({"name": name, "shape": list(a.shape), "dtype": str(a.dtype),
                       "chunks": list(a.chunks), "bytes_on_disk": _dir_size(path / name),
                       "bytes": int(a.nbytes)})
    doc = {"path": str(path), "video_uid": i.video_uid, "schema_version": i.schema_version,
           "num_steps": i.num_steps, "duration_s": i.duration_s, "fps": i.grid.fps,
           "window_frames": i.grid.window, "stride_frames": i.grid.stride,
           "steps_per_second": i.grid.steps_per_second, "video_sources": i.video_sources,
           "gaze_sources": i.gaze_sources, "extra": store.extra, "arrays": arrays}
    if as_json:
        print_json(doc)
        return
    h, rest = divmod(i.duration_s, 3600)
    m, s = divmod(rest, 60)
    print(f"{path}\n  video {i.video_uid}, schema v{i.schema_version}, {i.num_steps} steps, "
          f"{int(h)}:{int(m):02d}:{s:04.1f} ({i.duration_s:.1f} s)\n  grid {i.grid.fps:g} fps, "
          f"window {i.grid.window} frames, stride {i.grid.stride} "
          f"({i.grid.steps_per_second:g} steps/s)\n  sources: video {list(i.video_sources)}, "
          f"gaze {list(i.gaze_sources)}\n")
    print_table(["array", "shape", "dtype", "chunks", "MB", "MB on disk"],
                [[a["name"], "x".join(map(str, a["shape"])), a["dtype"],
                  "x".join(map(str, a["chunks"])), f"{a['bytes'] / 1e6:.2f}",
                  f"{a['bytes_on_disk'] / 1e6:.2f}"] for a in arrays])


@app.command()
def validate(
    paths: Annotated[list[str], typer.Argument(help="Stores to check (paths, or URLs such "
                                               "as s3://bucket/video.zarr).")],
    shallow: Annotated[bool, typer.Option(help="Metadata only; skip reading every chunk.")]
    = False,
    cache_dir: Annotated[Path | None, typer.Option(
        envvar="GAZENLQ_CACHE_DIR", help="Where gaze-search keeps the indexes, if not in "
        "the stores.")] = None,
) -> None:
    """Check stores (metadata, then every chunk) and their search indexes (every array's size
    and sha256 against its record); the first problem is one line, exit 2."""
    from gazenlq.engine.cache import check_caches
    from gazenlq.store import validate_store

    for p in paths:
        info_ = validate_store(p, deep=not shallow)
        caches = check_caches(p, cache_dir)
        print(f"ok  {p}  ({info_.num_steps} steps, {caches} index(es) verified)")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-store", argv)
