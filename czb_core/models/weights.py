"""Model weights fetched once and kept in a local cache that a cut download can never poison.

A variant names its weights by URI: `s3://bucket/prefix` (a folder or a single object), an
`https://`/`http://` file or `.tar.gz` archive, or a local path. `WeightsCache.fetch` turns the URI
into a local directory. Each cache entry lives at `<root>/<readable name>-<hash of uri>/` with the
files under `files/` and a `manifest.json` beside them. Every file is written under a temporary name
and renamed only once its size (and, on S3, its MD5 ETag) checks out, and the manifest is written
last, so an entry counts as cached only when the manifest exists and every listed file has its
listed size. A local directory is used where it is, never copied.

An admin can also fill an entry without its source (`staging` + `install`, used by
`czb_core.models.weights_admin`): the files are assembled beside the cache and the finished entry is
renamed into place. A variant whose weights have no download gets the entry `czb-import://<model>/<variant>`.

Every failure surfaces as `WeightsError` with a message that says what to do, not a botocore or
requests traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Optional
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import boto3
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

import czb_core
from czb_core.config import get_settings
from czb_core.errors import WeightsError
from czb_core.io.atomic import atomic_path, write_json_atomically
from czb_core.io.hashing import sha256_file, sha256_file_cached
from czb_core.progress import CancelToken, ProgressCallback, no_progress

STEP = "download weights"
IMPORT_STEP = "import weights"
IMPORT_SCHEME = "czb-import"  # the entry of weights that have no download, only an admin's import
CHUNK_BYTES = 1 << 20
MANIFEST_NAME = "manifest.json"
FILES_DIR = "files"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
HTTP_TIMEOUT = (10, 60)  # seconds to connect, seconds between bytes
WHERE_TO_LOOK = "check the variant's URI or the --weights option"
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


class SourceUnreachable(WeightsError):
    """The weights' server did not answer at all (offline, no network), as opposed to refusing a request."""


class Source(NamedTuple):
    """A parsed weights URI: `kind` is "s3", "http", "local" or "import"."""

    kind: str
    location: str  # bucket, URL or filesystem path
    key: str = ""  # S3 prefix or object key


def imported_uri(model: str, variant: str) -> str:
    """The cache key of a variant whose weights have no download (`weights_from`): only an import fills it."""
    return f"{IMPORT_SCHEME}://{model}/{variant}"


def parse_uri(uri: str) -> Source:
    """Split a weights URI; an unknown scheme is an error rather than a guess."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise WeightsError(f"{uri}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        return Source("s3", parts.netloc, parts.path.lstrip("/"))
    if parts.scheme in ("http", "https"):
        return Source("http", uri)
    if parts.scheme == "file":
        return Source("local", url2pathname(unquote(parts.path)))
    if parts.scheme == IMPORT_SCHEME:
        return Source("import", f"{parts.netloc}{parts.path}")
    if parts.scheme == "":
        return Source("local", str(Path(uri).expanduser()))
    raise WeightsError(
        f"{uri}: unsupported scheme {parts.scheme!r}; use s3://, https://, http://, file:// or a local path"
    )


# ----------------------------------------------------------------------------- writing files


@dataclass
class _ByteProgress:
    """Reports bytes done across all files of one fetch (or import) as `progress(step, done, total)`."""

    progress: ProgressCallback
    total: Optional[int]
    done: int = 0
    step: str = STEP

    def __post_init__(self) -> None:
        self.progress(self.step, 0, self.total)

    def add(self, n_bytes: int) -> None:
        self.done += n_bytes
        self.progress(self.step, self.done, self.total)


def _write_atomically(
    chunks: Iterable[bytes],
    dest: Path,
    what: str,
    expected_size: Optional[int],
    meter: _ByteProgress,
    cancel: Optional[CancelToken],
    expected_md5: Optional[str] = None,
) -> str:
    """Stream `chunks` into `dest` and return their sha256.

    The bytes go to a temporary name beside `dest` and are renamed only once complete and verified,
    so a killed or cut download leaves no file under the final name.
    """
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            if cancel is not None:
                cancel.check()
            fh.write(chunk)
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
            meter.add(len(chunk))
        fh.flush()
        if expected_size is not None and size != expected_size:
            raise WeightsError(
                f"download of {what} was cut short: got {size:,} of {expected_size:,} bytes; try again"
            )
        if expected_md5 is not None and md5.hexdigest() != expected_md5:
            raise WeightsError(f"download of {what} is corrupted: its MD5 does not match the ETag; try again")
    return sha256.hexdigest()


def _safe_relpath(name: str, what: str) -> PurePosixPath:
    """A relative path that cannot leave its target directory (no absolute path, no `..`)."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise WeightsError(f"{what}: refusing unsafe path {name!r}, which could land outside the target")
    return rel


def _record(key: str, path: PurePosixPath, size: int, sha256: str, etag=None, last_modified=None) -> dict:
    return {
        "key": key,
        "path": str(path),
        "size": size,
        "etag": etag,
        "sha256": sha256,
        "last_modified": last_modified,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


# ----------------------------------------------------------------------------- S3


def sync_s3_to_local(
    bucket: str,
    prefix: str,
    local_dir: str | Path,
    unsigned: bool = True,
    endpoint_url: Optional[str] = None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> list[dict]:
    """Download every object under `s3://bucket/prefix` into `local_dir`, keeping paths below `prefix`.

    When `prefix` is exactly an object's key, only that object is fetched, into `local_dir/<basename>`.
    Returns one record per file: key, path (relative to `local_dir`), size, etag, sha256, last_modified.
    """
    uri = f"s3://{bucket}/{prefix}"
    local_dir = Path(local_dir)
    with _s3_errors(uri, endpoint_url, unsigned):
        client = _s3_client(unsigned, endpoint_url)
        objects = _list_objects(client, bucket, prefix)
        if not objects:
            raise WeightsError(f"no objects under {uri} — {WHERE_TO_LOOK}")
        meter = _ByteProgress(progress, sum(size for _, _, size in objects))
        return [
            _download_object(client, bucket, key, rel, local_dir, meter, cancel)
            for key, rel, _ in objects
        ]


def _s3_client(unsigned: bool, endpoint_url: Optional[str], timeout: float = 60, attempts: int = 3):
    """A client from a fresh session: boto3's default session is not safe to share across threads.
    A quick question (a listing for the size) passes a short `timeout` and one attempt, so an offline
    server answers "unknown" in seconds rather than after minutes of retries."""
    options = {"retries": {"max_attempts": attempts, "mode": "standard"},
               "connect_timeout": min(10, timeout), "read_timeout": timeout}
    if unsigned:
        options["signature_version"] = UNSIGNED
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=Config(**options))


@functools.lru_cache(maxsize=8)
def _quick_s3_client(unsigned: bool, endpoint_url: Optional[str], timeout: float):
    """One client for short questions, shared by threads (clients are thread-safe; making one takes ~0.5 s)."""
    return _s3_client(unsigned, endpoint_url, timeout=timeout, attempts=1)


def _list_objects(client, bucket: str, prefix: str) -> list[tuple[str, PurePosixPath, int]]:
    """(key, relative path, size) for the object `prefix` itself, else for every object under `prefix/`."""
    folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key == prefix and not key.endswith("/"):
                return [(key, PurePosixPath(PurePosixPath(key).name), obj["Size"])]
            if key.startswith(folder) and not key.endswith("/"):  # a trailing "/" marks a folder
                found.append((key, _safe_relpath(key[len(folder):], f"s3://{bucket}/{key}"), obj["Size"]))
    return found


def _download_object(client, bucket, key, rel, local_dir, meter, cancel) -> dict:
    """Fetch one object, checking its length and (for single-part uploads) its MD5 ETag."""
    response = client.get_object(Bucket=bucket, Key=key)
    etag = response["ETag"].strip('"')
    with contextlib.closing(response["Body"]) as body:
        sha256 = _write_atomically(
            body.iter_chunks(CHUNK_BYTES),
            local_dir / rel,
            f"s3://{bucket}/{key}",
            response["ContentLength"],
            meter,
            cancel,
            expected_md5=etag if _MD5_ETAG.fullmatch(etag) else None,  # multipart ETags are not MD5s
        )
    return _record(key, rel, response["ContentLength"], sha256, etag, response["LastModified"].isoformat())


@contextlib.contextmanager
def _s3_errors(uri: str, endpoint_url: Optional[str], unsigned: bool) -> Iterator[None]:
    """Turn botocore failures into `WeightsError`s that say what to do next."""
    try:
        yield
    except ClientError as exc:
        raise WeightsError(_client_error_message(exc, uri, unsigned)) from exc
    except NoCredentialsError as exc:
        raise WeightsError(
            f"no AWS credentials found to read {uri}; configure them, "
            "or unset CZB_S3_SIGNED for a public bucket"
        ) from exc
    except BotoConnectionError as exc:
        raise SourceUnreachable(
            f"cannot reach the S3 endpoint {endpoint_url or 'of AWS'} for {uri}: the server may be offline "
            f"or there is no network ({exc})"
        ) from exc
    except BotoCoreError as exc:
        raise WeightsError(f"download of {uri} failed: {exc}; try again") from exc


def _client_error_message(exc: ClientError, uri: str, unsigned: bool) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return f"your AWS credentials were rejected reading {uri} ({code}); renew or fix them"
    if code in ("AccessDenied", "AllAccessDisabled", "Forbidden", "403") or status == 403:
        if unsigned:
            return f"access denied to {uri}; set CZB_S3_SIGNED=1 and AWS credentials if the bucket is private"
        return f"access denied to {uri} with your AWS credentials; they need s3:ListBucket and s3:GetObject"
    if code == "NoSuchBucket":
        return f"bucket of {uri} does not exist — {WHERE_TO_LOOK}"
    if code in ("NoSuchKey", "NotFound", "404") or status == 404:
        return f"no object at {uri} — {WHERE_TO_LOOK}"
    return f"S3 refused {uri}: {code} {error.get('Message', '')}".rstrip()


# ----------------------------------------------------------------------------- HTTP(S)


def fetch_url(
    url: str,
    local_dir: str | Path,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> list[dict]:
    """Download `url` into `local_dir`; a `.tar.gz`/`.tgz` is unpacked there and the archive dropped.

    For an archive the records describe every file then in `local_dir`, which should start empty.
    """
    local_dir = Path(local_dir)
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    name = name if name not in ("", ".", "..") else "download"
    is_archive = name.endswith(ARCHIVE_SUFFIXES)
    dest = local_dir / (f".{name}.download" if is_archive else name)
    with _http_errors(url):
        # identity encoding: the bytes on disk must be the bytes that Content-Length counts
        headers = {"Accept-Encoding": "identity"}
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT, headers=headers) as resp:
            resp.raise_for_status()
            size = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers else None
            meter = _ByteProgress(progress, size)
            sha256 = _write_atomically(resp.iter_content(CHUNK_BYTES), dest, url, size, meter, cancel)
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    if not is_archive:
        return [_record(url, PurePosixPath(name), dest.stat().st_size, sha256, etag, modified)]
    try:
        _extract_tar(dest, local_dir, url)
    finally:
        dest.unlink()
    return describe_tree(local_dir)


@contextlib.contextmanager
def _http_errors(url: str) -> Iterator[None]:
    """Turn requests failures into `WeightsError`s that say what to do next."""
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code
        if status in (404, 410):
            raise WeightsError(f"no file at {url} (HTTP {status}) — {WHERE_TO_LOOK}") from exc
        if status in (401, 403):
            raise WeightsError(f"access denied to {url} (HTTP {status})") from exc
        raise WeightsError(
            f"{url} answered HTTP {status}; the server may be having trouble, try again later"
        ) from exc
    except requests.ConnectionError as exc:
        raise SourceUnreachable(
            f"cannot reach {urlsplit(url).netloc} for {url}: the server may be offline "
            f"or there is no network ({exc})"
        ) from exc
    except requests.RequestException as exc:
        raise WeightsError(f"download of {url} failed: {exc}; try again") from exc


def _extract_tar(
    archive: Path,
    dest: Path,
    url: str,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    step: str = STEP,
) -> None:
    """Unpack only members that stay inside `dest`, reporting the bytes of the files unpacked.

    Names that are absolute or contain `..` are refused outright (the "data" filter would quietly
    strip a leading "/"); the filter then refuses links pointing outside `dest` and device files.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _safe_relpath(member.name, f"archive {url}")
            meter = _ByteProgress(progress, sum(m.size for m in members if m.isfile()), step=step)
            for member in members:
                if cancel is not None:
                    cancel.check()
                tar.extract(member, dest, filter="data")
                if member.isfile():
                    meter.add(member.size)
    except (tarfile.TarError, EOFError, OSError) as exc:  # a truncated gzip ends in EOFError or OSError
        raise WeightsError(f"archive {url} is unsafe or unreadable: {exc}") from exc


def unpack_archive(
    archive: Path | BinaryIO,
    dest: str | Path,
    what: str,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> list[dict]:
    """Unpack a `.tar`/`.tar.gz` (a path, or a stream such as an upload) into `dest`, with the same
    refusals as a downloaded archive; returns the records of every file unpacked."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(archive, (str, Path)):
        _extract_tar(Path(archive), dest, what, progress, cancel, IMPORT_STEP)
        return describe_tree(dest)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".upload-") as spool:
        saved = Path(spool) / "archive"
        chunks = iter(lambda: archive.read(CHUNK_BYTES), b"")
        _write_atomically(chunks, saved, what, None, _ByteProgress(progress, None, step=IMPORT_STEP), cancel)
        _extract_tar(saved, dest, what, progress, cancel, IMPORT_STEP)
    return describe_tree(dest)


# ----------------------------------------------------------------------------- local paths


def copy_local(
    path: str | Path,
    local_dir: str | Path,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> list[dict]:
    """Copy one local file into `local_dir`, with the same atomic write as a download."""
    path = Path(path)
    meter = _ByteProgress(progress, path.stat().st_size)
    rel = PurePosixPath(path.name)
    return [_copy_file(path, Path(local_dir), rel, str(path), meter, cancel)]


def copy_tree(
    folder: str | Path,
    local_dir: str | Path,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> list[dict]:
    """Copy every file under `folder` into `local_dir` at the same relative paths, each written atomically
    and hashed on the way. A symlink leading out of `folder` is refused: it would copy files from a place
    the caller never named (and may not be allowed to read)."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for file in files:
        if not file.resolve().is_relative_to(folder):
            raise WeightsError(f"{file} links outside {folder}; copy the file itself there")
    meter = _ByteProgress(progress, sum(f.stat().st_size for f in files), step=IMPORT_STEP)
    records = []
    for file in files:
        rel = PurePosixPath(file.relative_to(folder).as_posix())
        records.append(_copy_file(file, Path(local_dir), rel, str(rel), meter, cancel))
    return records


def _copy_file(path: Path, local_dir: Path, rel: PurePosixPath, key: str, meter: _ByteProgress, cancel) -> dict:
    stat = path.stat()
    with open(path, "rb") as fh:
        chunks = iter(lambda: fh.read(CHUNK_BYTES), b"")
        sha256 = _write_atomically(chunks, local_dir / rel, str(path), stat.st_size, meter, cancel)
    return _record(key, rel, stat.st_size, sha256, None, _iso(stat.st_mtime))


def describe_tree(root: Path) -> list[dict]:
    """Records for every regular file under `root`, keyed by their path relative to it."""
    records = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        rel = PurePosixPath(file.relative_to(root).as_posix())
        sha256 = sha256_file_cached(file)
        records.append(_record(str(rel), rel, stat.st_size, sha256, None, _iso(stat.st_mtime)))
    return records


# ----------------------------------------------------------------------------- the cache


class WeightsCache:
    """Weights by URI, downloaded once into `root` and shared by every run on this machine.

    `root`, `endpoint_url` and `signed` default to `CZB_WEIGHTS_DIR`, `CZB_S3_ENDPOINT_URL` and
    `CZB_S3_SIGNED`. Fetches of the same URI from several threads or processes take turns on a lock
    file, so the second one finds the entry complete instead of rewriting it.
    """

    def __init__(
        self, root: Optional[Path] = None, endpoint_url: Optional[str] = None, signed: Optional[bool] = None
    ):
        settings = get_settings()
        self.root = Path(root) if root is not None else settings.weights_dir
        self.endpoint_url = endpoint_url if endpoint_url is not None else settings.s3_endpoint_url
        self.signed = signed if signed is not None else settings.s3_signed

    def entry_dir(self, uri: str) -> Path:
        """The entry for `uri`: `<root>/<readable name>-<hash>`, or the folder itself for a local folder."""
        local = _local_dir(uri)
        if local is not None:
            return local
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"^[A-Za-z0-9+.-]+://", "", uri)).strip("._-")[:80]
        return self.root / f"{readable or 'weights'}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"

    def is_cached(self, uri: str) -> bool:
        """True when `fetch(uri)` would need no download."""
        return self.manifest(uri) is not None

    def cached_files(self, uri: str) -> Optional[Path]:
        """The folder holding `uri`'s files when they are cached (a local folder: itself), else None; never
        downloads."""
        local = _local_dir(uri)
        if local is not None:
            return local
        return self.entry_dir(uri) / FILES_DIR if self.is_cached(uri) else None

    def manifest(self, uri: str) -> Optional[dict]:
        """The entry's manifest if it is complete; for a local folder, one computed on the spot."""
        local = _local_dir(uri)
        if local is not None:
            return _manifest(uri, describe_tree(local))
        return _read_complete_manifest(self.entry_dir(uri))

    def fetch(
        self,
        uri: str,
        progress: ProgressCallback = no_progress,
        cancel: Optional[CancelToken] = None,
        expected_sha256: Optional[dict[str, str]] = None,
    ) -> Path:
        """A local directory holding the weights of `uri`, downloading them unless already cached.

        `expected_sha256` maps relative paths to hex digests; a mismatch deletes the entry (never a
        local folder the user pointed at) and raises `WeightsError`.
        """
        local = _local_dir(uri)
        if local is not None:
            check_sha256(self.manifest(uri), expected_sha256, uri)
            return local
        entry = self.entry_dir(uri)
        with self._lock(entry):
            manifest = _read_complete_manifest(entry)
            fresh = manifest is None
            try:
                if fresh:
                    manifest = self._download(uri, entry, progress, cancel)
                check_sha256(manifest, expected_sha256, uri)
                if fresh:
                    write_json_atomically(entry / MANIFEST_NAME, manifest, indent=2)
            except BaseException:
                shutil.rmtree(entry, ignore_errors=True)
                raise
        return entry / FILES_DIR

    def _download(self, uri: str, entry: Path, progress, cancel) -> dict:
        """Fill a clean `entry/files` from the source; leftovers of a killed fetch are discarded first."""
        shutil.rmtree(entry, ignore_errors=True)
        files = entry / FILES_DIR
        files.mkdir(parents=True)
        source = parse_uri(uri)
        if source.kind == "s3":
            records = sync_s3_to_local(
                source.location, source.key, files, not self.signed, self.endpoint_url, progress, cancel
            )
        elif source.kind == "http":
            records = fetch_url(source.location, files, progress, cancel)
        elif source.kind == "import":
            raise WeightsError(
                f"{uri}: these weights have no download; an admin imports them into the cache "
                "(the Weights page, or `czb weights import`)"
            )
        elif Path(source.location).is_file():
            records = copy_local(source.location, files, progress, cancel)
        else:
            raise WeightsError(f"{uri}: no such file or directory — {WHERE_TO_LOOK}")
        return _manifest(uri, records)

    def source_size(self, uri: str, timeout: float = 5.0) -> Optional[int]:
        """Bytes the source of `uri` holds, asked without downloading them: the S3 listing, the HTTP
        Content-Length (of the archive, for a `.tar.gz`), the size on disk. None when the source does
        not say (no Content-Length, an import-only entry). Raises `WeightsError` when it cannot be reached."""
        source = parse_uri(uri)
        if source.kind == "s3":
            with _s3_errors(uri, self.endpoint_url, not self.signed):
                client = _quick_s3_client(not self.signed, self.endpoint_url, timeout)
                objects = _list_objects(client, source.location, source.key)
            if not objects:
                raise WeightsError(f"no objects under {uri} — {WHERE_TO_LOOK}")
            return sum(size for _, _, size in objects)
        if source.kind == "http":
            with _http_errors(uri):
                resp = requests.head(uri, timeout=timeout, allow_redirects=True,
                                     headers={"Accept-Encoding": "identity"})
                resp.raise_for_status()
            length = resp.headers.get("Content-Length")
            return int(length) if length else None
        if source.kind == "local":
            path = Path(source.location)
            if not path.exists():
                raise WeightsError(f"{uri}: no such file or directory — {WHERE_TO_LOOK}")
            if path.is_file():
                return path.stat().st_size
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return None

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty folder on the cache's filesystem to assemble entries in (so `install` is a rename);
        removed with whatever is left in it when the block ends."""
        incoming = self.root / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=incoming))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def install(self, uri: str, staged: Path, records: list[dict], **facts) -> dict:
        """Make `staged` (a folder from `staging()` holding `files/`) the entry of `uri`, with a manifest
        of `records` plus `facts` (who imported it, from where). The old entry is removed and the new one
        renamed in under the entry's lock, so a reader finds the old entry, none, or the new one whole."""
        if _local_dir(uri) is not None:
            raise WeightsError(f"{uri} is a local folder, used where it is; there is no cache entry to replace")
        manifest = {**_manifest(uri, records), **facts}
        write_json_atomically(Path(staged) / MANIFEST_NAME, manifest, indent=2)
        entry = self.entry_dir(uri)
        with self._lock(entry):
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(staged, entry)
        return manifest

    def verify(self, uri: str) -> list[str]:
        """Every difference between a cached entry's files and the sha256 its manifest recorded (empty when
        intact). It reads every byte again: `is_cached` compares only sizes, which miss a changed byte."""
        entry = self.entry_dir(uri)
        if _local_dir(uri) is not None:
            return []  # a folder used in place is hashed on every use; there is no record to compare with
        try:
            records = json.loads((entry / MANIFEST_NAME).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{uri} is not in the cache (no readable manifest)"]
        problems = []
        for record in records:
            try:
                digest = sha256_file(entry / FILES_DIR / record["path"])
            except OSError:
                problems.append(f"{record['path']} is missing")
                continue
            if digest != record["sha256"]:
                problems.append(f"{record['path']} has sha256 {digest}, not the recorded {record['sha256']}")
        return problems

    @contextlib.contextmanager
    def _lock(self, entry: Path) -> Iterator[None]:
        """An exclusive `flock` per entry; it holds between threads too, since each opens its own file."""
        lock_path = self.root / ".locks" / f"{entry.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _local_dir(uri: str) -> Optional[Path]:
    """The directory a local-folder URI names, else None (local files are copied into the cache)."""
    source = parse_uri(uri)
    if source.kind == "local" and Path(source.location).is_dir():
        return Path(source.location)
    return None


def _manifest(uri: str, records: list[dict]) -> dict:
    return {
        "uri": uri,
        "files": records,
        "total_bytes": sum(r["size"] for r in records),
        "fetched_at": datetime.now(timezone.utc).isoformat(),
        "czb_version": getattr(czb_core, "__version__", "dev"),
    }


def tree_sha256(manifest: dict) -> str:
    """One checksum for a whole entry: the sha256 of its sorted `path<TAB>sha256` lines, the same for the
    same files wherever and in whatever order they were fetched."""
    lines = sorted(f"{r['path']}\t{r['sha256']}\n" for r in manifest["files"])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _read_complete_manifest(entry: Path) -> Optional[dict]:
    """The manifest, only if it exists and every file it lists is on disk with its listed size."""
    try:
        manifest = json.loads((entry / MANIFEST_NAME).read_text())
        complete = all((entry / FILES_DIR / r["path"]).stat().st_size == r["size"] for r in manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if complete else None


def check_sha256(manifest: dict, expected: Optional[dict[str, str]], uri: str) -> None:
    """Compare recorded digests with the ones a variant pins; missing or different files are errors."""
    recorded = {r["path"]: r["sha256"] for r in manifest["files"]}
    for path, want in (expected or {}).items():
        got = recorded.get(path)
        if got is None:
            raise WeightsError(f"{uri} has no file {path!r}, which the variant expects — {WHERE_TO_LOOK}")
        if got.lower() != want.lower():
            raise WeightsError(
                f"checksum mismatch for {path!r} from {uri}: expected sha256 {want}, got {got}"
            )
