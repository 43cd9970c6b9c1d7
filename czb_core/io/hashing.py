"""Content hashes: datasets, uploads and weight files are named and checked by their sha256."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 8 << 20


def sha256_stream(fileobj: BinaryIO) -> str:
    """Hex sha256 of a binary stream, read in chunks (files can be many GB)."""
    digest = hashlib.sha256()
    while block := fileobj.read(CHUNK_BYTES):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_file_cached(path: str | Path) -> str:
    """`sha256_file`, computed once per (path, size, mtime): an unchanged file is not read twice."""
    stat = Path(path).stat()
    return _sha256_of_version(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)
