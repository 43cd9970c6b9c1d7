"""Unpickling weights only when they are the bytes the weights cache recorded from a trusted source.

Some checkpoints (a scvi-tools `model.pt`, pickled dictionaries) can only be read with a full unpickle,
which runs whatever code the file names. Such a file is loaded only when

1. its bytes came through the weights cache from the variant's configured source, or the user vouched
   for them with an explicit sha256 (a `--weights` override names bytes nobody has checked); and
2. the sha256 of the bytes about to be unpickled equals the one the cache recorded when it downloaded
   them, and every pin given (the config's `weights_sha256`, the user's sha256).

With no pin in the config, the digest recorded at the first download from the configured bucket is the
pin (trust on first download): later corruption or substitution in the cache is refused. A same-user
attacker who can rewrite both the file and the manifest beside it is out of scope; a config pin holds
against that too.

`verify_trusted_file` reads the file once and hashes those bytes; `torch_load_verified` unpickles
exactly those bytes from memory. There is no second read of the path, so nothing can swap the file
between the check and the unpickle.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, NamedTuple, Optional

from czb_core.errors import WeightsError


class VerifiedFile(NamedTuple):
    """The bytes of a weights file whose sha256 matched every record and pin."""

    path: Path
    data: bytes
    sha256: str


def verify_trusted_file(
    root: Optional[Path],
    relpath: str,
    manifest: Optional[dict],
    *,
    configured_uri: Optional[str],
    pins: Iterable[Optional[str]] = (),
) -> VerifiedFile:
    """Read `root/relpath` and return its bytes if they may be unpickled, else raise `WeightsError`.

    `manifest` is the weights-cache manifest of the directory `root`; `configured_uri` the variant's own
    weights URI; `pins` expected sha256 digests (None entries are ignored).
    """
    pins = [p.strip().lower() for p in pins if p]
    refuse = f"refusing to unpickle {relpath}"
    if manifest is None or root is None:
        raise WeightsError(f"{refuse}: no weights-cache manifest records what was downloaded into {root}")
    path = Path(root) / relpath
    source = manifest.get("uri")
    if source != configured_uri and not pins:
        raise WeightsError(
            f"{refuse} from {source}: unpickling runs code from the file, and these weights are an override, "
            f"not the variant's configured source ({configured_uri}). If you trust the file, pass its sha256 "
            "(--param weights_sha256=<hex>, e.g. from `sha256sum model.pt`)"
        )
    recorded = {PurePosixPath(r["path"]).as_posix(): r["sha256"] for r in manifest.get("files", [])}
    want = recorded.get(PurePosixPath(relpath).as_posix())
    if want is None:
        raise WeightsError(f"{refuse}: the weights from {source} have no {relpath} in their manifest")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{refuse}: cannot read {path} ({exc})") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != want.lower():
        raise WeightsError(
            f"{refuse}: {path} changed after it was downloaded from {source} (sha256 {got}, recorded {want}); "
            f"delete {Path(root).parent} to download it again"
        )
    for pin in pins:
        if got != pin:
            raise WeightsError(f"{refuse}: its sha256 is {got}, but {pin} was expected ({source})")
    return VerifiedFile(path, data, got)


def torch_load_verified(verified: VerifiedFile, map_location: str = "cpu") -> Any:
    """Full unpickle (`weights_only=False`) of bytes that `verify_trusted_file` accepted, from memory."""
    if not isinstance(verified, VerifiedFile):
        raise TypeError("torch_load_verified takes the VerifiedFile that verify_trusted_file returned")
    import torch

    return torch.load(io.BytesIO(verified.data), map_location=map_location, weights_only=False)
