"""A real S3-compatible server on loopback for the remote tests: moto in server mode.

``S3Server`` runs moto's ``ThreadedMotoServer`` on 127.0.0.1, port 0 (the kernel picks a free
one), in a daemon thread of the test process. ``tests/conftest.py`` starts one per session (the
``s3`` fixture) and gives each test a fresh bucket (``s3_bucket``). While it runs, the process
environment (inherited by every subprocess the tests start) holds dummy credentials and
``AWS_ENDPOINT_URL_S3`` pointing at it, and nothing that would let botocore reach the network:
no profile or config file, no instance metadata lookup.

s3fs keeps filesystem instances in a class-level cache keyed by its arguments, and the endpoint
comes from the environment, not the arguments: ``clear_fs_cache()`` drops them, so that a test
that points the endpoint elsewhere (the fault proxy) never reuses another test's instance.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

ENV_KEYS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "NO_PROXY", "no_proxy",
)


def s3_env(endpoint: str) -> dict[str, str | None]:
    """The environment a process needs to talk to the server at ``endpoint`` and nothing else
    (``None`` = unset)."""
    env: dict[str, str | None] = {k: None for k in ENV_KEYS}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL_S3=endpoint,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


@contextmanager
def patched_env(env: dict[str, str | None]):
    """Set (or unset, for ``None``) environment variables; restore them on exit."""
    old = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_fs_cache()
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_fs_cache()


def clear_fs_cache() -> None:
    """Forget every cached s3fs filesystem (and its endpoint and connection pool)."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")``."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url}")
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key.strip("/")


class S3Server:
    """moto's server on 127.0.0.1 in a thread: ``.endpoint``, ``.client`` (boto3),
    ``new_bucket()``, ``put()``, ``put_dir()``, ``keys()``, ``drop_bucket()``."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request, else
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        import boto3

        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        self._server.stop()

    def env(self) -> dict[str, str | None]:
        return s3_env(self.endpoint)

    def new_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, bucket: str) -> None:
        """Delete every object, unfinished multipart upload and the bucket itself (frees the
        server's memory)."""
        c = self.client
        for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for up in page.get("Uploads", []):
                c.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                c.delete_object(Bucket=bucket, Key=obj["Key"])
        c.delete_bucket(Bucket=bucket)

    def put(self, src: str | os.PathLike | bytes, url: str) -> str:
        """Upload a local file (or bytes) to ``s3://bucket/key``; returns the URL."""
        bucket, key = split_url(url)
        if isinstance(src, (bytes, bytearray, memoryview)):
            self.client.put_object(Bucket=bucket, Key=key, Body=bytes(src))
        else:
            self.client.upload_file(str(src), bucket, key)
        return url

    def put_dir(self, local_dir: str | os.PathLike, url: str) -> str:
        """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``;
        returns the URL (no trailing slash)."""
        root = Path(local_dir)
        url = url.rstrip("/")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"{root} holds no files")
        for p in files:
            self.put(p, f"{url}/{p.relative_to(root).as_posix()}")
        return url

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, sorted."""
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def multipart_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        r = self.client.list_multipart_uploads(Bucket=bucket)
        return sorted(u["Key"] for u in r.get("Uploads", []))


def s3_available() -> str | None:
    """None when moto's server, boto3 and s3fs import; else why not (a skip reason)."""
    for mod in ("moto.server", "boto3", "s3fs"):
        try:
            __import__(mod)
        except ImportError as e:
            return f"{mod} is not importable ({e}); pip install -e '.[dev]' brings it"
    return None
