"""A local S3-compatible server (moto in server mode) on 127.0.0.1, for tests and benchmarks
of stores on object storage: ``with local_s3() as endpoint: ...``.

The S3 client libraries find it through their usual environment variables
(``AWS_ENDPOINT_URL``, dummy credentials), set for the block and restored after it, so the
code under test is configured exactly as a user's would be.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def local_s3() -> Iterator[str]:
    """Start moto's S3 on a free port of 127.0.0.1; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def upload(local: Path, bucket: str, prefix: str) -> str:
    """Upload the directory ``local`` (a store) to ``s3://bucket/prefix``, creating the
    bucket; returns the store's URL. Uses the environment's endpoint and credentials."""
    import boto3

    s3 = boto3.client("s3")
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"
