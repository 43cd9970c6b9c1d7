"""What an admin sees and does with model weights, for servers where a user's first run should not be the
one that downloads gigabytes, or that cannot reach the weights' source at all.

- `list_weights`: every variant's weights entries with their cache state, size and checksum.
- `fetch_weights`: download a variant's weights now, with byte progress.
- `import_weights`: put weights copied onto the server (a folder under the allowed data roots, or an
  uploaded `.tar.gz`) into the cache, where runs find them exactly as if downloaded.
- `verify_weights`: re-read cached files against the sha256 recorded when they arrived.
Which entries a variant has, and what to tell a user when some are missing, is
`czb_core.models.variant_weights.VariantWeights`.

An import is assembled beside the cache, hashed, and tried with the variant's own `check_weights` (the
runner reads its files as it would to check a dataset) before it replaces the cache entry. A folder that is
not the variant's weights is refused with the runner's message about what is missing, and nothing of it stays.
`check_weights` reads what a dataset check needs (vocabularies, gene tables, configs); files only loading
the network reads (a Geneformer or UCE checkpoint, scVI's `model.pt`) are checked at the first run.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional, Sequence
from urllib.parse import urlsplit

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.config import get_settings
from czb_core.errors import Cancelled, ConfigError, CzbError, InputError, WeightsError
from czb_core.io.header import header_from_anndata
from czb_core.models.registry import MODEL_ROLE, ModelConfig, discover_models, get_model, main_role
from czb_core.models.variant_weights import VariantWeights
from czb_core.models.weights import (
    ARCHIVE_SUFFIXES,
    FILES_DIR,
    SourceUnreachable,
    WeightsCache,
    check_sha256,
    copy_tree,
    describe_tree,
    parse_uri,
    tree_sha256,
    unpack_archive,
)
from czb_core.progress import CancelToken, ProgressCallback, format_amount, no_progress
from czb_core.schema.report import ValidationReport
from czb_core.types import Organism

log = logging.getLogger(__name__)

TAR_SUFFIXES = (*ARCHIVE_SUFFIXES, ".tar")
PROBE_GENES = {"symbol": ("TP53", "GAPDH", "ACTB"),
               "ensembl": ("ENSG00000141510", "ENSG00000111640", "ENSG00000075624")}
SIZE_TIMEOUT_S = 3.0  # per source, asked in parallel: an offline server lists its weights in seconds


@dataclass(frozen=True)
class WeightsEntry:
    """One weights entry of one variant (a variant may need several: model, dictionaries, vocab...)."""

    model: str
    variant: str
    role: str
    uri: str
    cached: bool
    size_bytes: Optional[int]
    size_from: str  # "cache", "source" (its listing), "estimate" (config.yaml's weights_size_mb) or "unknown"
    sha256: Optional[str]  # `tree_sha256` of the cached files: one checksum for the entry
    n_files: int = 0
    origin: str = ""  # "downloaded <when>" or "imported from <where> by <whom> <when>"; "" when not cached
    weights_from: str = ""  # where the authors publish weights that have no download

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def size_text(self) -> str:
        """`1.2 GB`, `~206.0 MB (estimate)` or `unknown`."""
        if self.size_bytes is None:
            return "unknown"
        amount = format_amount(self.size_bytes, "bytes")
        return f"~{amount} (estimate)" if self.size_from == "estimate" else amount


# ----------------------------------------------------------------------------- which entries a variant has


# ----------------------------------------------------------------------------- listing


def list_weights(
    cache: Optional[WeightsCache] = None, look_up_sizes: bool = True, timeout: float = SIZE_TIMEOUT_S
) -> list[WeightsEntry]:
    """Every weights entry of every variant. The size of an entry not cached comes from its source's
    listing when `look_up_sizes` and the source answers within `timeout`, else from the config's estimate."""
    cache = cache or WeightsCache()
    wanted = [(config, vname, role, uri) for config in discover_models().values() for vname in config.variants
              for role, uri in VariantWeights.of(config, vname, cache).entries.items()]
    manifests = {uri: cache.manifest(uri) for *_, uri in wanted}
    entries = [_entry(config, vname, role, uri, manifests[uri]) for config, vname, role, uri in wanted]
    if not look_up_sizes:
        return entries
    return with_source_sizes(entries, source_sizes({e.uri for e in entries if not e.cached}, cache, timeout))


def with_source_sizes(entries: Sequence[WeightsEntry], sizes: dict[str, int]) -> list[WeightsEntry]:
    """The entries, those not cached with the size their source reported (from `source_sizes`)."""
    return [replace(e, size_bytes=sizes[e.uri], size_from="source") if not e.cached and e.uri in sizes else e
            for e in entries]


def source_sizes(uris: Iterable[str], cache: Optional[WeightsCache] = None,
                 timeout: float = SIZE_TIMEOUT_S) -> dict[str, int]:
    """The sizes the sources report; sources that do not answer are left out. One source per server is
    asked first, and only the servers that answered are asked the rest, so an offline machine waits about
    one `timeout` in all, not one per source."""
    cache = cache or WeightsCache()
    by_server: dict[str, list[str]] = {}
    for uri in sorted(uris):
        source = parse_uri(uri)
        by_server.setdefault(urlsplit(uri).netloc if source.kind == "http" else source.kind, []).append(uri)

    def ask(uri: str) -> tuple[Optional[int], bool]:
        """(size, whether the server answered)."""
        try:
            return cache.source_size(uri, timeout), True
        except SourceUnreachable as exc:
            log.info("sizes from %s unknown: %s", uri, exc)
            return None, False
        except CzbError as exc:
            log.info("size of %s unknown: %s", uri, exc)
            return None, True

    with ThreadPoolExecutor(max_workers=8) as pool:
        firsts = [server_uris[0] for server_uris in by_server.values()]
        answers = dict(zip(firsts, pool.map(ask, firsts)))
        rest = [uri for server_uris in by_server.values() if answers[server_uris[0]][1] for uri in server_uris[1:]]
        answers.update(zip(rest, pool.map(ask, rest)))
    return {uri: size for uri, (size, _) in answers.items() if size is not None}


def _entry(config: ModelConfig, vname: str, role: str, uri: str, manifest: Optional[dict]) -> WeightsEntry:
    chosen = config.variant(vname)
    common: dict[str, Any] = dict(model=config.name, variant=vname, role=role, uri=uri,
                                  weights_from=chosen.weights_from)
    if manifest is not None:
        return WeightsEntry(**common, cached=True, size_bytes=manifest["total_bytes"], size_from="cache",
                            sha256=tree_sha256(manifest), n_files=len(manifest["files"]), origin=_origin(manifest))
    if chosen.weights_size_mb and role == MODEL_ROLE:
        size, size_from = int(chosen.weights_size_mb * 2**20), "estimate"
    else:
        size, size_from = None, "unknown"
    return WeightsEntry(**common, cached=False, size_bytes=size, size_from=size_from, sha256=None)


def _origin(manifest: dict) -> str:
    when = str(manifest.get("fetched_at", ""))[:19].replace("T", " ")
    if manifest.get("imported_from"):
        return f"imported from {manifest['imported_from']} by {manifest.get('imported_by') or 'unknown'} {when}"
    return f"downloaded {when}"


# ----------------------------------------------------------------------------- fetching and checking


def _implementation(config: ModelConfig, variant: Optional[str], cache: WeightsCache):
    return config.load_implementation()(config, variant, weights_cache=cache)


def fetch_weights(
    model: str,
    variant: Optional[str] = None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    cache: Optional[WeightsCache] = None,
) -> dict[str, Path]:
    """Download every entry of the variant that is not cached yet (role -> folder), exactly as a run would:
    same cache, same pinned checksums. `progress` gets ("download weights", bytes done, bytes total) per entry."""
    config = get_model(model)
    weights = VariantWeights.of(config, variant, cache)
    if not weights.has_download and weights.entries:
        raise WeightsError(f"{weights.label} has no download: get the weights from {weights.variant.weights_from} "
                           "and import them (the Weights page, or `czb weights import`)")
    if not weights.entries:
        raise ConfigError(f"{weights.label} uses no weights; there is nothing to download")
    return _implementation(config, weights.variant.name, weights.cache).fetch_weights(progress, cancel)


def verify_weights(model: str, variant: Optional[str] = None,
                   cache: Optional[WeightsCache] = None) -> dict[str, list[str]]:
    """role -> differences between the cached files and their recorded sha256 (empty lists: intact)."""
    cache = cache or WeightsCache()
    entries = VariantWeights.of(get_model(model), variant, cache).entries
    return {role: cache.verify(uri) for role, uri in entries.items()}


# ----------------------------------------------------------------------------- importing


def import_weights(
    model: str,
    variant: Optional[str],
    source: str | Path | BinaryIO,
    *,
    role: Optional[str] = None,
    name: Optional[str] = None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    cache: Optional[WeightsCache] = None,
    allowed_roots: Optional[Sequence[Path]] = None,
    imported_by: Optional[str] = None,
) -> list[WeightsEntry]:
    """Put the weights in `source` into the cache as the variant's entries and return them.

    `source` is a server path (a folder, or a `.tar`/`.tar.gz` file) under `allowed_roots` (default: the
    data roots, `CZB_DATA_ROOTS`), or an open binary stream of a tarball (an upload, named `name`). The
    folder holds one entry's files in the layout of its source; a variant with several entries takes
    `role`, or a folder with one subfolder per role (those present are imported). Raises `InputError`
    (a path not allowed), `ConfigError` (an unknown variant or role) or `WeightsError` (the files are not
    the variant's weights, with what is missing); the cache is then exactly as before.
    """
    config = get_model(model)
    cache = cache or WeightsCache()
    implementation = _implementation(config, variant, cache)
    label = implementation.weights.label
    roles = implementation.weights.entries
    if not roles:
        raise ConfigError(f"{label} uses no weights; there is nothing to import")
    is_stream = not isinstance(source, (str, Path))
    where = (name or getattr(source, "name", None) or "the upload") if is_stream else str(source)
    with cache.staging() as staging:
        root, movable = _unpacked(source, staging / "unpacked", where, allowed_roots, progress, cancel)
        parts = _role_folders(root, roles, role, label, where)
        records = {r: _stage(folder, staging / r, movable, progress, cancel) for r, folder in parts.items()}
        empty = [r for r, recs in records.items() if not recs]
        if empty:
            raise WeightsError(f"{where} holds no files for {label} ({', '.join(empty)}); nothing was imported")
        _check_pins(implementation, roles, records, where)
        _try_weights(implementation, label, where, roles, {r: staging / r / FILES_DIR for r in parts}, records,
                     cache)
        facts = dict(imported_from=where, imported_by=imported_by or get_settings().user,
                     imported_at=datetime.now(timezone.utc).isoformat())
        manifests = {r: cache.install(roles[r], staging / r, records[r], **facts) for r in parts}
    return [_entry(config, implementation.variant, r, roles[r], manifests[r]) for r in parts]


def resolve_allowed(path: str | Path, roots: Optional[Sequence[Path]] = None) -> Path:
    """`path` resolved (`..` and symlinks followed) when it lies under one of `roots` (default: the data
    roots) and exists; `InputError` otherwise, so a web user names only folders an admin allowed."""
    roots = tuple(Path(r).resolve() for r in (get_settings().data_roots if roots is None else roots))
    if not roots:
        raise InputError("importing from a server folder is disabled; an administrator allows folders by setting "
                         "CZB_DATA_ROOTS (directories separated by ':') before starting the app")
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise InputError(f"{path} is outside the allowed data folders: {', '.join(str(r) for r in roots)}")
    if not resolved.exists():
        raise InputError(f"{path}: no such folder or file")
    return resolved


def _unpacked(source, dest: Path, where: str, allowed_roots, progress, cancel) -> tuple[Path, bool]:
    """(folder holding the files, whether it lies in staging and may be moved): an allowed server folder as
    it is, an archive (a stream, or an allowed server file) unpacked into `dest`."""
    if isinstance(source, (str, Path)):
        path = resolve_allowed(source, allowed_roots)
        if path.is_dir():
            return path, False
        if not path.name.endswith(TAR_SUFFIXES):
            raise InputError(f"{source} is neither a folder nor a .tar/.tar.gz archive of weights")
        source = path
    unpack_archive(source, dest, where, progress, cancel)
    return dest, True


def _role_folders(root: Path, roles: dict[str, str], role: Optional[str], label: str, where: str) -> dict[str, Path]:
    """role -> the folder holding that entry's files."""
    if role is not None:
        if role not in roles:
            raise ConfigError(f"{label} has no weights part {role!r}; its parts: {', '.join(roles)}")
        return {role: root}
    if len(roles) == 1:
        return {next(iter(roles)): root}
    present = {r: root / r for r in roles if (root / r).is_dir()}
    if not present:
        raise WeightsError(f"{label} has its weights in {len(roles)} parts ({', '.join(roles)}): name the part "
                           f"{where} holds (role, --role), or give a folder with a subfolder per part "
                           f"({', '.join(r + '/' for r in roles)})")
    return present


def _stage(folder: Path, dest: Path, movable: bool, progress: ProgressCallback, cancel) -> list[dict]:
    """The entry's files under `dest/files`: moved when already unpacked in staging, else copied."""
    files = dest / FILES_DIR
    if not movable:
        return copy_tree(folder, files, progress, cancel)
    dest.mkdir(parents=True, exist_ok=True)
    folder.replace(files)
    return describe_tree(files)


def _check_pins(implementation, roles: dict[str, str], records: dict[str, list[dict]], where: str) -> None:
    """The variant's `weights_sha256` pins hold for an imported model entry as for a downloaded one."""
    pinned = implementation.variant_config.weights_sha256
    main = main_role(roles)
    if pinned and main in records:
        check_sha256({"files": records[main]}, pinned, where)


def _try_weights(implementation, label: str, where: str, roles: dict[str, str], staged: dict[str, Path],
                 records: dict[str, list[dict]], cache: WeightsCache) -> None:
    """Run the variant's `check_weights` on the staged entries (and the cached ones of the other parts)
    with a two-cell dataset; any failure to read them refuses the import.

    The runner sees the entries as a run will after the import: the folders as `weights_dirs`, and as
    `weights_manifest` the manifest the model entry gets on install (its configured URI, the staged files'
    sha256), so a runner that verifies files against the manifest (scVI's `model.pt`) checks these bytes."""
    dirs = dict(staged)
    for role, uri in roles.items():
        cached = None if role in dirs else cache.cached_files(uri)
        if cached is not None:
            dirs[role] = cached
    main = main_role(roles)
    implementation.weights_dirs = dirs
    implementation.weights_manifest = ({"uri": roles[main], "files": records[main]} if main in records
                                       else cache.manifest(roles[main]))
    report = ValidationReport(model=implementation.config.name, variant=implementation.variant)
    try:
        implementation.check_weights(_probe_manager(implementation), report, dirs)
    except KeyError as exc:
        absent = exc.args[0] if exc.args else None
        if absent not in roles or absent in dirs:
            raise
        raise WeightsError(
            f"{label}: checking these files needs its {absent} part as well ({roles[absent]}), which is not in "
            f"the cache; fetch or import it first, or import the parts together (subfolders "
            f"{', '.join(r + '/' for r in roles)})") from None
    except (WeightsError, ConfigError, OSError, ValueError, RuntimeError) as exc:
        message = str(exc)
        for role, folder in staged.items():  # name the folder the admin gave, not the staging copy
            message = message.replace(str(folder), where if len(staged) == 1 else f"{where}/{role}")
        raise WeightsError(f"{where} is not usable as the weights of {label}: {message}") from exc


def _probe_manager(implementation):
    """A two-cell, three-gene dataset in the variant's first organism: `check_weights` compares a dataset
    with the model's files, so it needs one, and this is the smallest a dataset may be."""
    organisms = getattr(implementation, "available_organisms", None) or (Organism.HUMAN,)
    naming = getattr(implementation, "gene_id_kind", None) or "symbol"
    genes = PROBE_GENES.get(naming, PROBE_GENES["symbol"])
    adata = ad.AnnData(X=sp.csr_matrix(np.ones((2, len(genes)), dtype=np.float32)),
                       var=pd.DataFrame(index=list(genes)))
    return implementation.data_manager(header_from_anndata(adata, "<weights check>"), organisms[0])


# ----------------------------------------------------------------------------- work in the background


@dataclass
class WeightsTask:
    """A fetch or an import running on a background thread, as a page polls it."""

    kind: str  # "download" or "import"
    model: str
    variant: str
    step: str = ""
    done: float = 0
    total: Optional[float] = None
    error: Optional[str] = None
    finished: bool = False
    started: float = field(default_factory=time.time)
    cancel: CancelToken = field(default_factory=CancelToken, repr=False)

    @property
    def running(self) -> bool:
        return not self.finished

    def report(self, step: str, done: float, total: Optional[float]) -> None:
        self.step, self.done, self.total = step, done, total


class WeightsTasks:
    """Downloads and imports on threads of the server process, one per variant at a time, so a page
    rerun (any click) neither interrupts nor repeats them; pages poll `task()`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[tuple[str, str], WeightsTask] = {}

    def start(self, kind: str, model: str, variant: str,
              work: Callable[[ProgressCallback, CancelToken], Any]) -> WeightsTask:
        """Run `work(progress, cancel)` in the background; refused while the variant has a task running."""
        with self._lock:
            current = self._tasks.get((model, variant))
            if current is not None and current.running:
                raise WeightsError(f"{model} / {variant}: a {current.kind} is already running")
            task = self._tasks[(model, variant)] = WeightsTask(kind, model, variant)
        threading.Thread(target=self._run, args=(task, work), name=f"weights-{model}-{variant}", daemon=True).start()
        return task

    def task(self, model: str, variant: str) -> Optional[WeightsTask]:
        with self._lock:
            return self._tasks.get((model, variant))

    def running(self) -> list[WeightsTask]:
        with self._lock:
            return [t for t in self._tasks.values() if t.running]

    @staticmethod
    def _run(task: WeightsTask, work: Callable[[ProgressCallback, CancelToken], Any]) -> None:
        try:
            work(task.report, task.cancel)
        except Cancelled:
            task.error = "cancelled"
        except CzbError as exc:
            task.error = str(exc)
        except Exception as exc:  # a bug: the page shows it, the log keeps the traceback
            log.exception("weights %s of %s / %s failed", task.kind, task.model, task.variant)
            task.error = f"unexpected error: {type(exc).__name__}: {exc}"
        finally:
            task.finished = True
