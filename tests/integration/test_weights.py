"""The weights cache against a real S3 endpoint (moto on loopback) and a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ResponseStreamingError
from botocore.response import StreamingBody

from czb_core.errors import Cancelled, WeightsError
from czb_core.models import weights
from czb_core.models.weights import WeightsCache, parse_uri
from czb_core.progress import CancelToken

FILES = {"model.ckpt": b"\x00\x01weights" * 300, "config/vocab.json": b'{"genes": ["A", "B"]}'}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz with the given file members and symlinks, names taken verbatim (even unsafe ones)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def cache(tmp_path, s3_server):
    return WeightsCache(root=tmp_path / "cache", endpoint_url=s3_server.endpoint_url, signed=False)


@pytest.fixture
def model_bucket(s3_server):
    """A bucket holding FILES under `models/scvi/`, plus a sibling prefix that must not leak in."""
    bucket = s3_server.new_bucket("models")
    for name, data in FILES.items():
        s3_server.put_bytes(bucket, f"models/scvi/{name}", data)
    s3_server.put_bytes(bucket, "models/scvi-old/model.ckpt", b"stale")
    return bucket


@pytest.fixture
def sync_calls(monkeypatch):
    """Counts real S3 downloads the cache starts."""
    calls = []
    real = weights.sync_s3_to_local

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(weights, "sync_s3_to_local", spy)
    return calls


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (status, body, announced Content-Length or None)`."""

    def do_GET(self):
        status, body, announced = self.server.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(announced if announced is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A plain HTTP server on loopback; `routes` and `url(path)` set up what it answers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {}
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------- S3


def test_s3_prefix_is_downloaded_once_and_then_reused(cache, s3_server, model_bucket, sync_calls):
    uri = f"s3://{model_bucket}/models/scvi"
    assert not cache.is_cached(uri)

    local = cache.fetch(uri)

    assert {p.relative_to(local).as_posix(): p.read_bytes() for p in all_files(local)} == FILES
    manifest = cache.manifest(uri)
    assert manifest["uri"] == uri and manifest["total_bytes"] == sum(map(len, FILES.values()))
    assert manifest["czb_version"]
    by_path = {r["path"]: r for r in manifest["files"]}
    assert set(by_path) == set(FILES)
    for name, data in FILES.items():
        assert by_path[name]["size"] == len(data)
        assert by_path[name]["sha256"] == sha256(data)
        assert by_path[name]["etag"] == hashlib.md5(data).hexdigest()  # single-part upload
        assert by_path[name]["key"] == f"models/scvi/{name}"
    assert json.loads((cache.entry_dir(uri) / "manifest.json").read_text()) == manifest
    assert cache.is_cached(uri)

    mtimes = {p: p.stat().st_mtime_ns for p in all_files(local)}
    assert cache.fetch(uri) == local
    assert len(sync_calls) == 1
    assert {p: p.stat().st_mtime_ns for p in all_files(local)} == mtimes


def test_single_object_uri_gives_its_folder(cache, model_bucket):
    uri = f"s3://{model_bucket}/models/scvi/model.ckpt"
    local = cache.fetch(uri)
    assert [p.name for p in all_files(local)] == ["model.ckpt"]
    assert (local / "model.ckpt").read_bytes() == FILES["model.ckpt"]
    assert cache.is_cached(uri)


def test_missing_prefix_names_the_uri(cache, model_bucket):
    uri = f"s3://{model_bucket}/models/geneformer/"
    with pytest.raises(WeightsError, match="no objects under") as err:
        cache.fetch(uri)
    assert uri in str(err.value) and "--weights" in str(err.value)
    assert not cache.is_cached(uri)


def test_missing_bucket(cache):
    with pytest.raises(WeightsError, match="does not exist"):
        cache.fetch("s3://no-such-bucket-here/models/scvi")


def test_private_object_is_denied_anonymously_and_readable_signed(tmp_path, s3_server):
    bucket = s3_server.new_bucket("private")
    s3_server.put_bytes(bucket, "m/model.ckpt", b"secret", public=False)
    uri = f"s3://{bucket}/m"

    anonymous = WeightsCache(root=tmp_path / "cache", endpoint_url=s3_server.endpoint_url, signed=False)
    with pytest.raises(WeightsError, match="access denied") as err:
        anonymous.fetch(uri)
    assert "CZB_S3_SIGNED=1" in str(err.value)
    assert not anonymous.is_cached(uri)

    signed = WeightsCache(root=tmp_path / "cache", endpoint_url=s3_server.endpoint_url, signed=True)
    assert (signed.fetch(uri) / "model.ckpt").read_bytes() == b"secret"


def test_unreachable_endpoint_says_so(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cache = WeightsCache(root=tmp_path / "cache", endpoint_url=endpoint, signed=False)
    with pytest.raises(WeightsError, match="offline") as err:
        cache.fetch("s3://bucket/models/scvi")
    assert endpoint in str(err.value)


def _stream_reset(body, chunk_size=1024):
    yield body.read(100)
    raise ResponseStreamingError(error="connection reset by peer")


def _stream_ends_early(body, chunk_size=1024):
    yield body.read(100)


def _stream_corrupted(body, chunk_size=1024):
    data = body.read()
    yield b"X" + data[1:]


@pytest.mark.parametrize(
    "stream, message",
    [(_stream_reset, "connection reset"), (_stream_ends_early, "cut short"), (_stream_corrupted, "corrupted")],
    ids=["reset", "ends-early", "corrupted"],
)
def test_s3_download_cut_halfway_caches_nothing(cache, model_bucket, monkeypatch, stream, message):
    uri = f"s3://{model_bucket}/models/scvi"
    real_iter_chunks = StreamingBody.iter_chunks

    monkeypatch.setattr(StreamingBody, "iter_chunks", stream)
    with pytest.raises(WeightsError, match=f"{message}.*try again"):
        cache.fetch(uri)
    assert not cache.is_cached(uri)
    assert cache.manifest(uri) is None
    assert all_files(cache.entry_dir(uri)) == []

    monkeypatch.setattr(StreamingBody, "iter_chunks", real_iter_chunks)
    assert (cache.fetch(uri) / "model.ckpt").read_bytes() == FILES["model.ckpt"]


def test_sync_leaves_no_partial_file_behind(tmp_path, s3_server, model_bucket, monkeypatch):
    target = tmp_path / "target"
    records = weights.sync_s3_to_local(model_bucket, "models/scvi/", target, endpoint_url=s3_server.endpoint_url)
    assert sorted(r["path"] for r in records) == sorted(FILES)

    monkeypatch.setattr(StreamingBody, "iter_chunks", _stream_reset)
    fresh = tmp_path / "fresh"
    with pytest.raises(WeightsError):
        weights.sync_s3_to_local(model_bucket, "models/scvi/", fresh, endpoint_url=s3_server.endpoint_url)
    assert all_files(fresh) == []  # neither the final name nor a .part- file


def test_incomplete_entries_do_not_count_as_cached(cache, model_bucket, sync_calls):
    uri = f"s3://{model_bucket}/models/scvi"
    local = cache.fetch(uri)
    manifest_path = cache.entry_dir(uri) / "manifest.json"

    (local / "model.ckpt").write_bytes(b"truncated")  # a file that lost its tail
    assert not cache.is_cached(uri)
    assert (cache.fetch(uri) / "model.ckpt").read_bytes() == FILES["model.ckpt"]

    manifest_path.unlink()  # killed before the manifest was written
    assert not cache.is_cached(uri)
    cache.fetch(uri)
    assert cache.is_cached(uri) and len(sync_calls) == 3


def test_expected_sha256_mismatch_removes_the_entry(cache, model_bucket):
    uri = f"s3://{model_bucket}/models/scvi"
    wrong = "0" * 64
    with pytest.raises(WeightsError) as err:
        cache.fetch(uri, expected_sha256={"model.ckpt": wrong})
    message = str(err.value)
    assert "model.ckpt" in message and wrong in message and sha256(FILES["model.ckpt"]) in message
    assert not cache.entry_dir(uri).exists()
    assert not cache.is_cached(uri)

    good = {name: sha256(data) for name, data in FILES.items()}
    cache.fetch(uri, expected_sha256=good)
    with pytest.raises(WeightsError, match="checksum mismatch"):  # also checked against a cached entry
        cache.fetch(uri, expected_sha256={"model.ckpt": wrong})
    assert not cache.is_cached(uri)
    with pytest.raises(WeightsError, match="no file 'absent.bin'"):
        cache.fetch(uri, expected_sha256={"absent.bin": wrong})


def test_progress_counts_bytes_up_to_the_total(cache, s3_server, monkeypatch):
    monkeypatch.setattr(weights, "CHUNK_BYTES", 1000)
    bucket = s3_server.new_bucket("progress")
    s3_server.put_bytes(bucket, "m/a.bin", b"a" * 5500)
    s3_server.put_bytes(bucket, "m/b.bin", b"b" * 3000)
    reports = []
    cache.fetch(f"s3://{bucket}/m", progress=lambda step, done, total: reports.append((step, done, total)))

    assert {step for step, _, _ in reports} == {"download weights"}
    assert {total for _, _, total in reports} == {8500}
    done = [d for _, d, _ in reports]
    assert done[0] == 0 and done[-1] == 8500
    assert all(b > a for a, b in zip(done, done[1:]))
    assert len(done) >= 10


def test_cancel_between_chunks_leaves_nothing(cache, s3_server, monkeypatch):
    monkeypatch.setattr(weights, "CHUNK_BYTES", 1000)
    bucket = s3_server.new_bucket("cancel")
    s3_server.put_bytes(bucket, "m/a.bin", b"a" * 5000)
    token = CancelToken()

    def progress(step, done, total):
        if done >= 2000:
            token.cancel()

    with pytest.raises(Cancelled):
        cache.fetch(f"s3://{bucket}/m", progress=progress, cancel=token)
    assert not cache.is_cached(f"s3://{bucket}/m")
    assert all_files(cache.root) == [] or all(p.suffix == ".lock" for p in all_files(cache.root))


def test_concurrent_fetches_download_once(cache, model_bucket, sync_calls, monkeypatch):
    uri = f"s3://{model_bucket}/models/scvi"
    counted_sync = weights.sync_s3_to_local

    def slow_sync(*args, **kwargs):
        time.sleep(0.3)  # keep the first download in flight while the second thread arrives
        return counted_sync(*args, **kwargs)

    monkeypatch.setattr(weights, "sync_s3_to_local", slow_sync)
    results, errors = [], []

    def worker():
        try:
            results.append(cache.fetch(uri))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert len(sync_calls) == 1
    assert (results[0] / "model.ckpt").read_bytes() == FILES["model.ckpt"]


# ----------------------------------------------------------------------------- HTTP(S)


def test_http_tar_gz_is_extracted(cache, http_server):
    http_server.routes["/scgpt.tar.gz"] = (200, tar_gz({"scgpt/best_model.pt": b"pt", "scgpt/args.json": b"{}"}), None)
    uri = http_server.url("/scgpt.tar.gz")

    local = cache.fetch(uri)

    assert {p.relative_to(local).as_posix() for p in all_files(local)} == {"scgpt/best_model.pt", "scgpt/args.json"}
    assert (local / "scgpt" / "best_model.pt").read_bytes() == b"pt"
    assert {r["path"]: r["sha256"] for r in cache.manifest(uri)["files"]}["scgpt/args.json"] == sha256(b"{}")


def test_http_single_file(cache, http_server):
    http_server.routes["/w/model.ckpt"] = (200, b"checkpoint", None)
    local = cache.fetch(http_server.url("/w/model.ckpt"))
    assert (local / "model.ckpt").read_bytes() == b"checkpoint"
    assert cache.manifest(http_server.url("/w/model.ckpt"))["files"][0]["size"] == len(b"checkpoint")


@pytest.mark.parametrize(
    "archive",
    [
        tar_gz({"../evil": b"x"}),
        tar_gz({"/tmp/evil": b"x"}),
        tar_gz({"ok.txt": b"x"}, links={"evil": "../../../evil"}),
    ],
    ids=["dotdot", "absolute", "symlink-out"],
)
def test_malicious_archive_is_rejected(cache, http_server, tmp_path, archive):
    http_server.routes["/bad.tar.gz"] = (200, archive, None)
    uri = http_server.url("/bad.tar.gz")
    with pytest.raises(WeightsError, match="unsafe"):
        cache.fetch(uri)
    assert not cache.is_cached(uri)
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))
    assert not cache.entry_dir(uri).exists()


def test_http_download_cut_short_caches_nothing(cache, http_server):
    body = b"w" * 10_000
    http_server.routes["/model.ckpt"] = (200, body[:4000], len(body))  # server dies mid-body
    uri = http_server.url("/model.ckpt")

    with pytest.raises(WeightsError, match="try again"):
        cache.fetch(uri)
    assert not cache.is_cached(uri) and cache.manifest(uri) is None
    assert all_files(cache.entry_dir(uri)) == []

    http_server.routes["/model.ckpt"] = (200, body, None)
    assert (cache.fetch(uri) / "model.ckpt").read_bytes() == body


def test_http_404(cache, http_server):
    with pytest.raises(WeightsError, match="HTTP 404"):
        cache.fetch(http_server.url("/nothing.tar.gz"))


# ----------------------------------------------------------------------------- local paths and URIs


def test_local_directory_is_used_in_place(tmp_path):
    folder = tmp_path / "my-weights"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.ckpt").write_bytes(b"local")
    (folder / "sub" / "vocab.json").write_bytes(b"{}")
    cache = WeightsCache(root=tmp_path / "cache")

    assert cache.fetch(str(folder)) == folder
    assert cache.fetch(f"file://{folder}") == folder
    assert cache.is_cached(str(folder))
    manifest = cache.manifest(str(folder))
    assert {r["path"]: r["sha256"] for r in manifest["files"]} == {
        "model.ckpt": sha256(b"local"),
        "sub/vocab.json": sha256(b"{}"),
    }
    assert not (tmp_path / "cache").exists() or all_files(tmp_path / "cache") == []

    with pytest.raises(WeightsError, match="checksum mismatch"):
        cache.fetch(str(folder), expected_sha256={"model.ckpt": "0" * 64})
    assert (folder / "model.ckpt").read_bytes() == b"local"  # never deletes the user's folder


def test_local_file_is_copied_into_the_cache(tmp_path):
    source = tmp_path / "model.ckpt"
    source.write_bytes(b"single")
    cache = WeightsCache(root=tmp_path / "cache")
    local = cache.fetch(f"file://{source}")
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "model.ckpt").read_bytes() == b"single"


def test_missing_local_path(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        WeightsCache(root=tmp_path / "cache").fetch(str(tmp_path / "absent"))


def test_uri_parsing_and_entry_names(tmp_path):
    assert parse_uri("s3://bucket/a/b/") == ("s3", "bucket", "a/b/")
    assert parse_uri("https://host/x.tgz") == ("http", "https://host/x.tgz", "")
    assert parse_uri("file:///opt/w") == ("local", "/opt/w", "")
    with pytest.raises(WeightsError, match="unsupported scheme 'ftp'"):
        parse_uri("ftp://host/weights")

    cache = WeightsCache(root=tmp_path)
    entry = cache.entry_dir("s3://czi-models/scvi/homo sapiens")
    assert entry.parent == tmp_path and entry.name.startswith("czi-models_scvi_homo_sapiens-")
    assert entry == cache.entry_dir("s3://czi-models/scvi/homo sapiens")
    assert entry != cache.entry_dir("s3://czi-models/scvi/homo_sapiens")


def test_defaults_come_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CZB_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CZB_S3_SIGNED", "1")
    cache = WeightsCache()
    assert (cache.root, cache.endpoint_url, cache.signed) == (tmp_path / "w", "http://127.0.0.1:9", True)
