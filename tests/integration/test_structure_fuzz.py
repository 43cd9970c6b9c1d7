"""Malformed structure, end to end: the reproductions through the command line, and a seeded fuzzer.

The fuzzer edits small well-formed files (h5ad with X in CSR, CSC or dense, with a counts layer or raw, and
10x `.h5` of CellRanger 3 and 2) at random: `indptr`, `indices` and `data` values, lengths and types, the
`shape` attribute or dataset, `encoding-type`/`encoding-version`, parts removed or replaced by groups. Every
outcome must be a refusal by `InputError` that names the file and the problem, or a file that reads
correctly everywhere it is read (header, full read, QC, history); never another exception. The bulk runs
in this process; a few cases go through `czb validate` and `czb run` in subprocesses, where a crash would
show as a negative exit status and an unexpected error as exit 4.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.header import read_header
from czb_core.io.reading import check_dataset_file, read_anndata
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.service.history import dataset_shape
from czb_core.viz.qc import per_cell_qc
from tests.helpers.bad_inputs import REPRODUCTIONS, write_10x_v2, write_10x_v3

N_CASES = 240
N_CELLS, N_GENES = 60, 40
SEED = 20240611


def czb(*argvs: list[str], home: Path) -> list[subprocess.CompletedProcess]:
    """`czb ARGV` for each of `argvs`, side by side in fresh interpreters (a segmentation fault there is an
    exit status here, not the death of this test)."""
    env = {**os.environ, "CZB_HOME": str(home)}
    started = [(argv, subprocess.Popen([sys.executable, "-m", "czb_core", *argv], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env)) for argv in argvs]
    results = []
    for argv, process in started:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return results


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2 with `message` (a regular expression), not 4 (unexpected error) nor a signal (negative)."""
    assert result.returncode == 2, (result.args, result.returncode, result.stderr[-2000:])
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr
    assert re.search(message, " ".join(result.stderr.split())), (result.args, result.stderr[-2000:])


# -- the reproductions, through the command line ------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REPRODUCTIONS))
def test_cli_refuses_each_reproduction_with_exit_2(kind, small_h5ad, tmp_path):
    """Before: `czb validate` exited 4 or passed, `czb run` exited 4 or died of SIGSEGV (-11)."""
    make, message = REPRODUCTIONS[kind]
    path = make(small_h5ad)
    out = tmp_path / "emb.h5ad"
    for result in czb(["validate", str(path), "--model", "pca"],
                      ["run", str(path), "--model", "pca", "--out", str(out)], home=tmp_path / "home"):
        assert_refused(result, message)
    assert not out.exists()


def test_cli_runs_a_csc_file(small_adata, tmp_path):
    by_columns = small_adata.copy()
    by_columns.X = small_adata.X.tocsc()
    path = tmp_path / "by_columns.h5ad"
    by_columns.write_h5ad(path)
    out = tmp_path / "emb.h5ad"
    [result] = czb(["run", str(path), "--model", "pca", "--out", str(out)], home=tmp_path / "home")
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.exists()


# -- the fuzzer -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A well-formed file and its sparse (`sparse`) and dense (`dense`) matrices open to corruption."""

    path: Path
    sparse: tuple[str, ...]
    dense: tuple[str, ...] = ()
    tenx: bool = False


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Template]:
    root = tmp_path_factory.mktemp("templates")
    adata = make_synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, n_types=2, n_batches=1, mean_counts=300, seed=3)
    ids, names = list(adata.var_names), list(adata.var["feature_name"])
    out: dict[str, Template] = {}

    csr = adata.copy()
    csr.layers["counts"] = adata.X.copy()
    csr.obsp["connectivities"] = sp.random(N_CELLS, N_CELLS, density=0.1, format="csr", random_state=0)
    csr.write_h5ad(root / "csr.h5ad")
    out["csr"] = Template(root / "csr.h5ad", ("X", "layers/counts", "obsp/connectivities"))
    csc = adata.copy()
    csc.X = adata.X.tocsc()
    csc.write_h5ad(root / "csc.h5ad")
    out["csc"] = Template(root / "csc.h5ad", ("X",))
    dense = adata.copy()
    dense.X = adata.X.toarray()
    dense.write_h5ad(root / "dense.h5ad")
    out["dense"] = Template(root / "dense.h5ad", (), ("X",))
    with_raw = adata.copy()
    with_raw.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    with_raw.raw = adata
    with_raw.write_h5ad(root / "raw.h5ad")
    out["raw"] = Template(root / "raw.h5ad", ("X", "raw/X"))
    out["10x v3"] = Template(write_10x_v3(root / "v3.h5", adata.X, ids, names), ("matrix",), tenx=True)
    out["10x v2"] = Template(write_10x_v2(root / "v2.h5", adata.X, ids, names), ("GRCh38",), tenx=True)
    for template in out.values():  # the starting points are sound
        assert check_dataset_file(template.path) == template.path
    return out


def _replace(group: h5py.Group, key: str, values) -> None:
    attrs = dict(group[key].attrs)
    del group[key]
    group[key] = values
    group[key].attrs.update(attrs)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# Each mutation edits one sparse group (`g`: data/indices/indptr and the shape as attribute or, for 10x, a
# dataset) or one dense dataset's parent and key, drawing what it needs from `rng`; it returns a label.


def indptr_value(g, rng):
    p = g["indptr"][()]
    i = int(rng.integers(len(p)))
    p[i] = int(rng.integers(-3, int(p[-1]) + 4))
    g["indptr"][...] = p
    return f"indptr[{i}]={p[i]}"


def indptr_swap(g, rng):
    p = g["indptr"][()]
    i = int(rng.integers(len(p) - 1))
    p[i], p[i + 1] = p[i + 1], p[i]
    g["indptr"][...] = p
    return f"indptr swap {i}"


def indptr_shift(g, rng):
    k = int(_pick(rng, [-2, -1, 1, 3]))
    _replace(g, "indptr", g["indptr"][()] + k)
    return f"indptr + {k}"


def indptr_length(g, rng):
    p = g["indptr"][()]
    _replace(g, "indptr", p[:-1] if rng.random() < 0.5 else np.append(p, p[-1]))
    return "indptr length"


def indices_value(g, rng):
    x = g["indices"][()]
    if x.size == 0:
        return "indices empty"
    i = int(rng.integers(x.size))
    x[i] = int(rng.integers(-2, int(x.max()) + 4))
    g["indices"][...] = x
    return f"indices[{i}]={x[i]}"


def indices_shuffle(g, rng):
    x = g["indices"][()]
    rng.shuffle(x)
    g["indices"][...] = x
    return "indices shuffled"


def part_dtype(g, rng):
    part = _pick(rng, ["indptr", "indices", "data"])
    values = g[part][()]
    kind = _pick(rng, ["float32", "text", "int8", "uint64", "bool", "complex64"])
    if kind == "text":
        new = np.array([str(v).encode() for v in values])
    else:
        new = values.astype(kind)
    _replace(g, part, new)
    return f"{part} as {kind}"


def part_shape(g, rng):
    part = _pick(rng, ["indptr", "indices", "data"])
    values = g[part][()]
    if rng.random() < 0.5 and values.size % 2 == 0:
        _replace(g, part, values.reshape(2, -1))
        return f"{part} 2-D"
    _replace(g, part, values[: max(0, values.size - int(rng.integers(1, 4)))])
    return f"{part} shortened"


def part_removed(g, rng):
    part = _pick(rng, ["indptr", "indices", "data"])
    del g[part]
    if rng.random() < 0.5:
        g.create_group(part)
        return f"{part} a group"
    return f"{part} removed"


def shape_value(g, rng):
    if "shape" in g and isinstance(g["shape"], h5py.Dataset):  # 10x: genes x cells as a dataset
        shape = g["shape"][()]
        new = _pick(rng, [shape[::-1], shape + [1, 0], shape - [0, 1], shape.astype(np.float64),
                          np.append(shape, 1), -shape, np.array([b"300", b"60"])])
        _replace(g, "shape", np.asarray(new))
        return f"shape dataset {new}"
    shape = np.asarray(g.attrs["shape"])
    new = _pick(rng, [shape[::-1], shape + [1, 0], shape + [0, 1], shape - [0, 1], shape.astype(np.float64),
                      np.append(shape, 1), -shape, "60x40", None])
    if new is None:
        del g.attrs["shape"]
    else:
        g.attrs["shape"] = new
    return f"shape attr {new}"


def encoding_attr(g, rng):
    if "encoding-type" not in g.attrs:  # 10x: its groups have no encodings; give it one anndata would misread
        g.attrs["encoding-type"] = _pick(rng, ["csr_matrix", "dataframe"])
        return "10x given an encoding"
    key = _pick(rng, ["encoding-type", "encoding-type", "encoding-version"])
    new = _pick(rng, ["csc_matrix", "csr_matrix", "array", "dataframe", "garbage", 5, np.array([b"csr_matrix", b"x"]),
                      "9.9.9", None])
    if new is None:
        del g.attrs[key]
    else:
        g.attrs[key] = new
    return f"{key}={new!r}"


def tenx_parts(g, rng):
    part = _pick(rng, ["barcodes", "features/id", "features/name", "genes", "gene_names"])
    if part not in g:
        part = "barcodes"
    values = g[part][()]
    if rng.random() < 0.5:
        _replace(g, part, values[:-1])
        return f"{part} shortened"
    del g[part]
    return f"{part} removed"


def dense_shape(parent, key, rng):
    x = parent[key][()]
    new = _pick(rng, [x.ravel(), x.reshape(2, *x.shape[:1], -1) if x.shape[1] % 2 == 0 else x.ravel(), x.T,
                      x[:-1], x[:, :-1], x[:1]])
    _replace(parent, key, new)
    return f"dense shape {new.shape}"


def dense_dtype(parent, key, rng):
    x = parent[key][()]
    kind = _pick(rng, ["text", "complex64", "bool", "int16", "compound"])
    if kind == "text":
        new = np.array([[str(v).encode() for v in row] for row in x])
    elif kind == "compound":
        new = np.zeros(x.shape, dtype=[("a", "f4"), ("b", "i4")])
    else:
        new = x.astype(kind)
    _replace(parent, key, new)
    return f"dense as {kind}"


def dense_encoding(parent, key, rng):
    new = _pick(rng, ["csr_matrix", "string-array", "garbage", None, 7])
    if new is None:
        del parent[key].attrs["encoding-type"]
    else:
        parent[key].attrs["encoding-type"] = new
    return f"dense encoding-type={new!r}"


SPARSE_MUTATIONS: tuple[Callable, ...] = (indptr_value, indptr_swap, indptr_shift, indptr_length, indices_value,
                                          indices_shuffle, part_dtype, part_shape, part_removed, shape_value,
                                          encoding_attr)
TENX_MUTATIONS = SPARSE_MUTATIONS + (tenx_parts,)
DENSE_MUTATIONS = (dense_shape, dense_dtype, dense_encoding)


def mutate(template: Template, path: Path, rng: np.random.Generator) -> str:
    """One or two seeded corruptions of a copy of `template` at `path`; what was done, for the report."""
    shutil.copyfile(template.path, path)
    labels = []
    with h5py.File(path, "a") as f:
        for _ in range(1 if rng.random() < 0.8 else 2):
            locations = template.sparse + template.dense
            location = _pick(rng, locations)
            try:
                if location in template.dense:
                    parent, _, key = location.rpartition("/")
                    labels.append(f"{location}: " + _pick(rng, DENSE_MUTATIONS)(f[parent] if parent else f, key, rng))
                else:
                    mutations = TENX_MUTATIONS if template.tenx else SPARSE_MUTATIONS
                    labels.append(f"{location}: " + _pick(rng, mutations)(f[location], rng))
            except (KeyError, TypeError, ValueError, AttributeError):  # a second edit of what the first removed
                labels.append(f"{location}: nothing left to edit")
    return "; ".join(labels)


READERS = (read_header, read_anndata, per_cell_qc)


def outcome(path: Path, case: int) -> str:
    """'refused' (an InputError naming the file) or 'accepted' (and then read correctly everywhere); any other
    exception propagates and fails the test with the case that raised it. A refused file must be refused by
    a reader too (the file may have been stored before the checks): one reader per case, in turn."""
    assert dataset_shape(path) is None or len(dataset_shape(path)) == 2  # the history never raises
    try:
        check_dataset_file(path)
    except InputError as exc:
        assert str(exc).startswith(f"{path.name}: "), exc
        with pytest.raises(InputError):
            READERS[case % len(READERS)](path)
        return "refused"
    header = read_header(path)
    adata = read_anndata(path)
    assert adata.shape == (header.n_obs, header.n_vars) == dataset_shape(path)
    x = adata.X
    for matrix in (x, *adata.layers.values(), *adata.obsp.values(), *([adata.raw.X] if adata.raw else [])):
        if sp.issparse(matrix):
            matrix.check_format(full_check=True)  # what scipy would trip over: pointers and indices inside
    location = header.counts_location or "X"
    qc = per_cell_qc(path, location)
    read = {"X": x, "layers/counts": adata.layers.get("counts"), "raw/X": adata.raw.X if adata.raw else None}
    np.testing.assert_allclose(qc["total_counts"], np.asarray(read[location].sum(axis=1), dtype=float).ravel(),
                               rtol=1e-5)
    return "accepted"


@dataclass
class Corpus:
    """The fuzzer's outcomes: counts, and each case's label, file and message (None when accepted)."""

    counts: Counter
    cases: list[tuple[str, str, Path, Optional[str]]]  # template, label, file, refusal


@pytest.fixture(scope="module")
def corpus(templates, tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("fuzzed")
    rng = np.random.default_rng(SEED)
    counts: Counter = Counter()
    cases = []
    kinds = sorted(templates)
    for case in range(N_CASES):
        kind = kinds[case % len(kinds)]
        path = root / f"case{case}{templates[kind].path.suffix}"
        label = mutate(templates[kind], path, rng)
        try:
            result = outcome(path, case)
        except Exception as exc:
            raise AssertionError(f"case {case} ({kind}; {label}): {type(exc).__name__}: {exc}") from exc
        counts[result] += 1
        counts[f"{kind} {result}"] += 1
        refusal = None
        if result == "refused":
            with pytest.raises(InputError) as caught:
                check_dataset_file(path)
            refusal = str(caught.value)
        cases.append((kind, label, path, refusal))
    return Corpus(counts, cases)


def test_structure_fuzzer(corpus):
    counts = corpus.counts
    print(f"\nstructure fuzzer: {N_CASES} cases, {counts['refused']} refused, {counts['accepted']} accepted, "
          "0 crashes or other exceptions")
    print("  by template: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if " " in k))
    assert counts["refused"] + counts["accepted"] == N_CASES
    assert counts["refused"] > N_CASES // 2  # the corruptions mostly break something; the fuzzer is not idle
    assert counts["accepted"], "some corruptions leave a sound file (a shuffled index, a narrower type); none did"


def test_fuzzed_files_through_the_cli(corpus, tmp_path):
    """A few refused cases through `czb validate` and `czb run`, and a PCA run of a few accepted ones, each in
    a subprocess: refusals exit 2 with the same message, runs finish, nothing exits 4 or dies of a signal."""
    refused = {kind: (path, message) for kind, _, path, message in reversed(corpus.cases) if message}
    accepted = {kind: path for kind, _, path, message in reversed(corpus.cases) if message is None}
    checks = [(["validate", str(refused[kind][0]), "--model", "pca"], refused[kind][1]) for kind in ("csc", "10x v3")]
    checks.append((["run", str(refused["csr"][0]), "--model", "pca", "--out", str(tmp_path / "refused.h5ad")],
                   refused["csr"][1]))
    runs = [["run", str(accepted[kind]), "--model", "pca", "--out", str(tmp_path / f"{kind}.h5ad")]
            for kind in ("raw", "10x v2")]
    results = czb(*[argv for argv, _ in checks], *runs, home=tmp_path / "home")
    for result, (_, message) in zip(results, checks):
        assert_refused(result, re.escape(message))
    for result in results[len(checks):]:
        assert result.returncode == 0 and "Traceback" not in result.stderr, (result.args, result.stderr[-2000:])
        assert Path(result.args[-1]).exists()
    assert not (tmp_path / "refused.h5ad").exists()
