"""Stores on object storage: a local S3 server (moto, 127.0.0.1) started by the test; a
store uploaded there is validated and searched by its s3:// URL with the same moments as
the local copy, its index goes to the user's cache directory (the bucket stays as it was),
and missing objects are one line naming the URL."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("s3fs", reason="the s3 extra (gazenlq[s3]) is not installed")
pytest.importorskip("moto", reason="moto[server] (dev extra) is not installed")

from gazenlq.engine import SearchEngine
from gazenlq.engine.cache import cache_root
from gazenlq.store import find_stores, validate_store
from tests.conftest import script
from tools.s3server import local_s3, upload

QUERIES = ["where did I put the knife", "when did I open the fridge"]


@pytest.fixture(scope="module")
def s3_library(tiny_trained, tmp_path_factory):
    """Two stores of the tiny dataset uploaded to a local S3 server (without any index):
    ``(endpoint, [local copies], prefix URL)``."""
    data, _ = tiny_trained
    root = tmp_path_factory.mktemp("s3_local")
    local = [shutil.copytree(p, root / p.name, ignore=shutil.ignore_patterns("cache"))
             for p in sorted(data.stores.glob("*.zarr"))[:2]]
    with local_s3() as endpoint:
        for p in local:
            upload(p, "videos", f"lib/{p.name}")
        yield endpoint, local, "s3://videos/lib"


def _moments(result):
    return [[(m.video, round(m.start_s, 4), round(m.end_s, 4), round(m.score, 5))
             for m in r.moments] for r in result]


def test_search_by_url_matches_the_local_copy_and_leaves_the_bucket_alone(s3_library,
                                                                          tiny_bundle):
    import boto3

    _, local, prefix = s3_library
    urls = find_stores(prefix)
    assert urls == [f"{prefix}/{p.name}" for p in local]
    assert validate_store(urls[0]).video_uid == validate_store(local[0]).video_uid
    engine = SearchEngine.from_bundle(tiny_bundle, mode="exhaustive", use_cache=False)
    want = engine.search(local, QUERIES)
    assert _moments(engine.search(prefix, QUERIES)) == _moments(want)
    cached = SearchEngine.from_bundle(tiny_bundle, mode="exhaustive")
    assert _moments(cached.search(urls, QUERIES)) == _moments(want)  # writes the index
    again = SearchEngine.from_bundle(tiny_bundle, mode="exhaustive").search(urls, QUERIES)
    assert again.timings.cached_windows == again.timings.windows > 0
    assert _moments(again) == _moments(want)
    assert all(list(cache_root(u).glob("*/video_emb.npy")) for u in urls)  # outside the bucket
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket="videos")["Contents"]]
    assert not [k for k in keys if "/cache/" in k or "/.cache-tmp" in k]


def _one_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_missing_objects_are_one_line_naming_the_url(s3_library, tiny_bundle):
    import boto3

    _, local, _ = s3_library
    cli = [script("gaze-search"), "--bundle", str(tiny_bundle), "--no-cache"]
    missing = "s3://videos/lib/nope.zarr"
    _one_line(subprocess.run([*cli, missing, "q"], capture_output=True, text=True,
                             timeout=300), missing, "no such feature store")
    # a store whose first chunk of video features is gone
    upload(local[0], "videos", "broken/v.zarr")
    s3 = boto3.client("s3")
    chunk = sorted(o["Key"] for o in s3.list_objects_v2(
        Bucket="videos", Prefix="broken/v.zarr/video_features/c/")["Contents"])[0]
    s3.delete_object(Bucket="videos", Key=chunk)
    _one_line(subprocess.run([*cli, "s3://videos/broken/v.zarr", "q"], capture_output=True,
                             text=True, timeout=300), "s3://videos/broken/v.zarr",
              "video_features")
