"""A real S3 endpoint for tests: moto in server mode on 127.0.0.1, one per test session.

Use it as a plugin (`pytest_plugins = ["tests.helpers.s3_server"]`, already in `tests/conftest.py`) and ask
for the `s3_server` fixture. Point code at `s3_server.endpoint_url`; upload with `put_bytes` or
`put_dir` (objects are public-read unless `public=False`) into a bucket from `new_bucket()`, whose
unique name keeps tests apart on the shared server.

How moto 5 treats anonymous (unsigned) requests, which is what the code under test sends by
default: listing a bucket always works, while GetObject answers 403 unless the object (or its
bucket) has a public-read ACL. Signed requests are accepted with any credentials; moto does not
check them unless told to.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(eq=False)
class S3Server:
    """Handle on the running moto server."""

    endpoint_url: str
    _names: itertools.count = field(default_factory=itertools.count, repr=False)

    @functools.cache
    def client(self):
        """A signed boto3 client with moto's dummy credentials (made once: building one is slow)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self, stem: str = "test") -> str:
        """Create a bucket whose name no other test on this server uses."""
        name = f"{stem}-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return name

    def put_bytes(self, bucket: str, key: str, data: bytes, public: bool = True) -> None:
        """Upload one object, creating the bucket if needed; `public=False` makes anonymous reads fail."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=bucket)
        extra = {"ACL": "public-read"} if public else {}
        client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

    def put_dir(self, bucket: str, prefix: str, local_dir: str | Path, public: bool = True) -> list[str]:
        """Upload every file under `local_dir` below `prefix`; returns the keys written."""
        local_dir = Path(local_dir)
        keys = []
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{file.relative_to(local_dir).as_posix()}".lstrip("/")
            self.put_bytes(bucket, key, file.read_bytes(), public=public)
            keys.append(key)
        return keys


@pytest.fixture(scope="session")
def s3_server():
    """Moto on a free loopback port for the whole session, with dummy AWS credentials in the environment."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in DUMMY_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        try:
            yield S3Server(endpoint_url=f"http://{host}:{port}")
        finally:
            server.stop()
