"""The perturbation a user asks for, checked against what the variant was trained on and the dataset.

A perturbation is written as in GEARS: `GENE+ctrl` (or `ctrl+GENE`) for one gene, `GENE1+GENE2` for two.
The model marks each named gene with flag 1 at its place on the gene axis; it learnt what such a flag
means only for genes perturbed in its training screen, so a gene outside that set is refused, with the
closest names of the set. The set is read from GEARS' processed copy of the screen
(`perturb_processed.h5ad`, obs['condition']), given as a folder or as the zip GEARS downloads.
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from czb_core.errors import ConfigError, WeightsError

CONTROL = "ctrl"
GEARS_FILE = "perturb_processed.h5ad"
N_CLOSE = 5


@dataclass(frozen=True)
class Perturbation:
    """The genes of a perturbation, in the order written."""

    text: str
    genes: tuple[str, ...]


def parse_perturbation(text: str) -> Perturbation:
    """`GENE+ctrl`, `ctrl+GENE` or `GENE1+GENE2`; anything else is a ConfigError saying how to write it."""
    text = str(text or "").strip()
    parts = [p.strip() for p in text.split("+")]
    genes = tuple(p for p in parts if p != CONTROL)
    if len(parts) != 2 or not all(parts) or not genes or (len(genes) == 2 and genes[0] == genes[1]):
        raise ConfigError(f"perturbation {text!r} is not GENE+ctrl or GENE1+GENE2 (two different genes), "
                          "e.g. perturbation=CEBPB+ctrl")
    return Perturbation(text, genes)


def flags_of(perturbation: Perturbation, genes_g) -> np.ndarray:
    """The flag per gene of the axis (1 at the perturbed genes, 0 elsewhere)."""
    genes_g = np.asarray(genes_g, dtype=str)
    flags_g = np.zeros(len(genes_g), dtype=np.int64)
    for gene in perturbation.genes:
        at = np.flatnonzero(genes_g == gene)
        if not len(at):
            raise ConfigError(f"perturbed gene {gene} is not on the gene axis")
        flags_g[at] = 1
    return flags_g


def close_names(name: str, names, n: int = N_CLOSE) -> list[str]:
    """The names most like `name`, ignoring case (symbols are often typed in the wrong case)."""
    by_upper: dict[str, list[str]] = {}
    for known in sorted(set(map(str, names))):
        by_upper.setdefault(known.upper(), []).append(known)
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=n, cutoff=0.6)
    return [known for upper in close for known in by_upper[upper]][:n]


def unknown_genes_message(genes, known, what: str) -> str:
    """`X is not among <what> (closest: A, B)` for each gene not in `known`."""
    parts = []
    for gene in genes:
        close = close_names(gene, known)
        parts.append(f"{gene} is not {what}" + (f" (closest: {', '.join(close)})" if close else ""))
    return "; ".join(parts)


def trained_genes(conditions) -> frozenset[str]:
    """The genes perturbed in any condition of a screen (`A+ctrl`, `A+B`, `ctrl`)."""
    return frozenset(g for c in map(str, conditions) for g in c.split("+") if g and g != CONTROL)


def read_training_conditions(folder: Path) -> list[str]:
    """The distinct conditions of GEARS' `perturb_processed.h5ad` under `folder`, or inside the one zip there."""
    folder = Path(folder)
    found = sorted(folder.rglob(GEARS_FILE))
    if found:
        return _conditions_of(found[0])
    archives = [p for p in sorted(folder.rglob("*")) if p.is_file() and zipfile.is_zipfile(p)]
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == GEARS_FILE]
            if not members:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / GEARS_FILE
                with zf.open(members[0]) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return _conditions_of(target)
    raise WeightsError(f"{folder} holds no {GEARS_FILE} (nor a zip with one): the variant's training data is "
                       "GEARS' processed copy of its screen, which names the perturbations it was trained on")


def _conditions_of(path: Path) -> list[str]:
    import anndata as ad

    try:
        adata = ad.read_h5ad(path, backed="r")
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"{path} cannot be read as an h5ad ({exc}); it may be truncated") from None
    try:
        if "condition" not in adata.obs:
            raise WeightsError(f"{path} has no obs['condition']; it is not a GEARS processed dataset")
        return sorted(map(str, adata.obs["condition"].unique()))
    finally:
        adata.file.close()
