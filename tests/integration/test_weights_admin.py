"""Weights an admin installs: listing, fetching from a real (loopback) S3 endpoint, importing tiny checkpoints
in the real formats from folders and tarballs, refusals that leave the cache as it was, and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from czb_core.cli import main
from czb_core.errors import InputError, WeightsError
from czb_core.models import weights_admin
from czb_core.models.registry import get_model
from czb_core.models.variant_weights import VariantWeights
from czb_core.models.weights import WeightsCache, imported_uri
from czb_core.models.weights_admin import (
    WeightsTasks,
    fetch_weights,
    import_weights,
    list_weights,
    verify_weights,
)
from tests.helpers.geneformer_files import dictionary_contents, write_dictionaries
from tests.helpers.scgpt_files import gene_symbols, write_checkpoint

BUCKET = "cz-benchmarks-data"
SCGPT_HUMAN = f"s3://{BUCKET}/models/v1/scgpt/human"
GF_DICTIONARIES = f"s3://{BUCKET}/models/v1/geneformer/vocabs/gene_dictionaries/"


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def tar_gz_of(folder: Path, arcroot: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(Path(arcroot) / path.relative_to(folder)))
    return buffer.getvalue()


def entry_of(model: str, variant: str, role: str = "model"):
    return next(e for e in list_weights(look_up_sizes=False)
                if (e.model, e.variant, e.role) == (model, variant, role))


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    return root


@pytest.fixture
def checkpoint(data_root) -> Path:
    """A tiny scGPT whole-human checkpoint folder (vocab.json, args.json, best_model.pt) under the data root."""
    return write_checkpoint(data_root / "scgpt_human", gene_symbols(40))


@pytest.fixture
def offline(monkeypatch):
    """An S3 endpoint where nothing listens: any download attempt fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CZB_S3_ENDPOINT_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")


@pytest.fixture
def s3_weights(s3_server, checkpoint, monkeypatch):
    """The configured scGPT human URI served by the loopback S3 server."""
    s3_server.put_dir(BUCKET, "models/v1/scgpt/human", checkpoint)
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    return checkpoint


# ----------------------------------------------------------------------------- fetch


def test_fetch_from_s3_reports_bytes_and_records_checksums(s3_weights):
    total = sum(p.stat().st_size for p in files_under(s3_weights))
    before = next(e for e in list_weights() if (e.model, e.variant) == ("scgpt", "human"))
    assert (before.cached, before.size_bytes, before.size_from) == (False, total, "source")
    assert VariantWeights.of(get_model("scgpt"), "human").missing_message() is not None

    reports = []
    folders = fetch_weights("scgpt", "human", progress=lambda *r: reports.append(r))

    assert digests(folders["model"]) == digests(s3_weights)
    assert {step for step, _, _ in reports} == {"download weights"}
    done = [d for _, d, _ in reports]
    assert done[0] == 0 and done[-1] == total and done == sorted(done)
    assert {t for _, _, t in reports} == {total}
    after = entry_of("scgpt", "human")
    assert (after.cached, after.size_bytes, after.size_from, after.n_files) == (True, total, "cache", 3)
    lines = sorted(f"{path}\t{sha}\n" for path, sha in digests(s3_weights).items())
    assert after.sha256 == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert after.origin.startswith("downloaded")
    assert VariantWeights.of(get_model("scgpt"), "human").missing_message() is None
    assert verify_weights("scgpt", "human") == {"model": []}


def test_fetch_of_a_variant_without_download_says_to_import():
    with pytest.raises(WeightsError, match="no download.*bowang-lab.*import"):
        fetch_weights("scgpt", "blood")


# ----------------------------------------------------------------------------- import


def test_import_folder_is_used_by_runs_without_network(checkpoint, offline):
    [entry] = import_weights("scgpt", "human", checkpoint, imported_by="admin@lab")

    assert entry.cached and entry.uri == SCGPT_HUMAN and entry.n_files == 3
    manifest = WeightsCache().manifest(SCGPT_HUMAN)
    assert {r["path"]: r["sha256"] for r in manifest["files"]} == digests(checkpoint)
    assert manifest["imported_from"] == str(checkpoint) and manifest["imported_by"] == "admin@lab"
    assert entry_of("scgpt", "human").origin.startswith(f"imported from {checkpoint} by admin@lab")
    # a run's fetch finds it in the cache: nothing is downloaded (the endpoint is dead)
    assert digests(WeightsCache().fetch(SCGPT_HUMAN)) == digests(checkpoint)
    assert VariantWeights.of(get_model("scgpt"), "human").missing_message() is None
    assert not files_under(WeightsCache().root / ".incoming")


def test_verify_finds_a_changed_byte_that_sizes_miss(checkpoint):
    import_weights("scgpt", "human", checkpoint)
    vocab = WeightsCache().entry_dir(SCGPT_HUMAN) / "files" / "vocab.json"
    data = bytearray(vocab.read_bytes())
    data[2] = ord("X") if data[2] != ord("X") else ord("Y")
    vocab.write_bytes(bytes(data))

    assert WeightsCache().is_cached(SCGPT_HUMAN)  # same size: the cheap check cannot tell
    [problem] = verify_weights("scgpt", "human")["model"]
    assert "vocab.json" in problem and "not the recorded" in problem
    assert main(["weights", "verify", "scgpt", "human"]) == 1


@pytest.mark.parametrize("as_stream", [False, True], ids=["server-file", "upload"])
def test_import_tarball(checkpoint, data_root, as_stream):
    archive = data_root / "scgpt_human.tar.gz"
    archive.write_bytes(tar_gz_of(checkpoint))
    source = io.BytesIO(archive.read_bytes()) if as_stream else archive
    reports = []

    [entry] = import_weights("scgpt", "human", source, name="upload.tar.gz", progress=lambda *r: reports.append(r))

    assert digests(WeightsCache().entry_dir(SCGPT_HUMAN) / "files") == digests(checkpoint)
    assert entry.sha256 == entry_of("scgpt", "human").sha256
    unpacked = [d for step, d, t in reports if step == "import weights" and t]
    assert unpacked[-1] == sum(p.stat().st_size for p in files_under(checkpoint))


def test_wrong_folder_is_refused_with_what_is_missing_and_leaves_the_cache_as_it_was(checkpoint, data_root):
    import_weights("scgpt", "human", checkpoint)
    good = digests(WeightsCache().entry_dir(SCGPT_HUMAN) / "files")
    wrong = data_root / "not_scgpt"
    wrong.mkdir()
    (wrong / "args.json").write_text((checkpoint / "args.json").read_text())
    (wrong / "best_model.pt").write_bytes(b"not a checkpoint")

    with pytest.raises(WeightsError, match=r"not usable as the weights of scGPT / human.*vocab\.json"):
        import_weights("scgpt", "human", wrong)

    assert digests(WeightsCache().entry_dir(SCGPT_HUMAN) / "files") == good
    assert not files_under(WeightsCache().root / ".incoming")


def test_refused_import_of_a_fresh_variant_caches_nothing(data_root):
    empty = data_root / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="holds no files"):
        import_weights("scgpt", "human", empty)
    with pytest.raises(WeightsError, match="unsafe"):
        import_weights("scgpt", "human", io.BytesIO(_tar_with_member("../evil", b"x")), name="evil.tar.gz")
    assert not WeightsCache().is_cached(SCGPT_HUMAN)
    assert not (data_root.parent / "evil").exists()
    assert not files_under(WeightsCache().root)


def _tar_with_member(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_folders_outside_the_data_roots_are_refused(tmp_path, data_root, monkeypatch):
    outside = write_checkpoint(tmp_path / "elsewhere", gene_symbols(10))
    with pytest.raises(InputError, match="outside the allowed data folders"):
        import_weights("scgpt", "human", outside)
    with pytest.raises(InputError, match="outside the allowed data folders"):
        import_weights("scgpt", "human", data_root / ".." / "elsewhere")

    link = data_root / "sneaky"
    link.mkdir()
    (link / "vocab.json").symlink_to(outside / "vocab.json")
    (link / "args.json").symlink_to(outside / "args.json")
    (link / "best_model.pt").symlink_to(outside / "best_model.pt")
    with pytest.raises(WeightsError, match="outside"):
        import_weights("scgpt", "human", link)

    monkeypatch.delenv("CZB_DATA_ROOTS")
    with pytest.raises(InputError, match="CZB_DATA_ROOTS"):
        import_weights("scgpt", "human", outside)
    assert not WeightsCache().is_cached(SCGPT_HUMAN)


def test_variant_without_download_is_imported_under_its_own_entry(data_root):
    folder = write_checkpoint(data_root / "blood", gene_symbols(20), seed=3)
    message = VariantWeights.of(get_model("scgpt"), "blood").missing_message()
    assert "no weights to download" in message and "bowang-lab" in message and "Weights page" in message

    [entry] = import_weights("scgpt", "blood", folder)

    assert entry.uri == imported_uri("scgpt", "blood") and entry.cached
    assert digests(WeightsCache().fetch(entry.uri)) == digests(folder)
    assert VariantWeights.of(get_model("scgpt"), "blood").missing_message() is None
    assert not WeightsCache().is_cached(imported_uri("scgpt", "lung"))


def test_a_variant_in_parts_imports_the_part_named(data_root):
    medians = {"ENSG00000141510": 1.5, "ENSG00000111640": 2.0}
    contents = dictionary_contents(medians, ("<pad>", "<mask>"), medians)
    contents_v2 = dictionary_contents(medians, ("<pad>", "<mask>", "<cls>", "<eos>"), medians)
    v1 = write_dictionaries(data_root / "dicts_v1", "gc30M", contents)
    v2 = write_dictionaries(data_root / "dicts_v2", "gc95M", contents_v2)

    with pytest.raises(WeightsError, match=r"2 parts \(model, dictionaries\)"):
        import_weights("geneformer", "gf-6L-30M-i2048", v1)
    with pytest.raises(WeightsError, match="token_dictionary_gc30M.pkl is missing") as err:
        import_weights("geneformer", "gf-6L-30M-i2048", v2, role="dictionaries")
    assert f"missing from {v2};" in str(err.value)  # the folder given, not the staging copy
    assert not WeightsCache().is_cached(GF_DICTIONARIES)

    [entry] = import_weights("geneformer", "gf-6L-30M-i2048", v1, role="dictionaries")
    assert (entry.role, entry.uri) == ("dictionaries", GF_DICTIONARIES)
    missing = VariantWeights.of(get_model("geneformer"), "gf-6L-30M-i2048").missing_message()
    assert "(model)" in missing  # the dictionaries are there; the checkpoint is not

    parent = data_root / "both"
    (parent / "dictionaries").mkdir(parents=True)
    write_dictionaries(parent / "dictionaries", "gc30M", contents)
    write_dictionaries(parent / "dictionaries", "gc95M", contents_v2)
    [entry] = import_weights("geneformer", "gf-20L-95M-i4096", parent)  # subfolders named after the parts
    assert entry.role == "dictionaries" and entry.n_files == 6


# ----------------------------------------------------------------------------- background tasks


def test_tasks_run_in_the_background_one_per_variant(checkpoint):
    tasks, release = WeightsTasks(), threading.Event()

    def slow_import(progress, cancel):
        release.wait(10)
        import_weights("scgpt", "human", checkpoint, progress=progress, cancel=cancel)

    task = tasks.start("import", "scgpt", "human", slow_import)
    with pytest.raises(WeightsError, match="already running"):
        tasks.start("download", "scgpt", "human", slow_import)
    assert tasks.running() == [task]
    release.set()
    for _ in range(200):
        if task.finished:
            break
        threading.Event().wait(0.05)
    assert task.finished and task.error is None and task.done == task.total > 0
    assert WeightsCache().is_cached(SCGPT_HUMAN)

    failed = tasks.start("import", "scgpt", "human", lambda progress, cancel: import_weights(
        "scgpt", "human", checkpoint.parent / "absent"))
    for _ in range(200):
        if failed.finished:
            break
        threading.Event().wait(0.05)
    assert "no such folder" in failed.error


# ----------------------------------------------------------------------------- the command line


def test_cli_list_fetch_import(s3_weights, data_root, capsys, monkeypatch):
    assert main(["weights", "list", "--json"]) == 0
    rows = {(r["model"], r["variant"], r["role"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("scgpt", "human", "model")]["cached"] is False
    assert rows[("scgpt", "blood", "model")]["weights_from"].startswith("https://github.com/bowang-lab")

    assert main(["weights", "fetch", "scgpt", "human"]) == 0
    out, err = capsys.readouterr()
    assert str(WeightsCache().entry_dir(SCGPT_HUMAN)) in out and "download weights" in err
    assert main(["weights", "list", "--no-sizes"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("scgpt") and " human " in row)
    assert "cached" in line and entry_of("scgpt", "human").sha256[:16] in line

    monkeypatch.delenv("CZB_DATA_ROOTS")  # the command line is not limited to the web app's data roots
    assert main(["weights", "import", "scgpt", "lung", str(s3_weights)]) == 0
    assert "imported 3 files" in capsys.readouterr().out
    assert WeightsCache().is_cached(imported_uri("scgpt", "lung"))

    wrong = data_root / "wrong"
    wrong.mkdir()
    (wrong / "readme.txt").write_text("not weights")
    assert main(["weights", "import", "scgpt", "kidney", str(wrong)]) == 3
    assert "args.json" in capsys.readouterr().err
    assert main(["weights", "import", "scgpt", "nope", str(wrong)]) == 2
    assert "no variant 'nope'" in capsys.readouterr().err


def test_pinned_checksums_hold_for_imports(checkpoint, monkeypatch):
    def pinned_scgpt(vocab_sha256: str):
        config = get_model("scgpt")
        human = replace(config.variants["human"], weights_sha256={"vocab.json": vocab_sha256})
        return replace(config, variants={**config.variants, "human": human})

    monkeypatch.setattr(weights_admin, "get_model", lambda name: pinned_scgpt("0" * 64))
    with pytest.raises(WeightsError, match=r"checksum mismatch for 'vocab.json'"):
        import_weights("scgpt", "human", checkpoint)
    assert not WeightsCache().is_cached(SCGPT_HUMAN)

    right = hashlib.sha256((checkpoint / "vocab.json").read_bytes()).hexdigest()
    monkeypatch.setattr(weights_admin, "get_model", lambda name: pinned_scgpt(right))
    [entry] = import_weights("scgpt", "human", checkpoint)
    assert entry.cached
