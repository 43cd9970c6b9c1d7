"""The weights of one model variant: its entries, the main one, what the cache holds of each, and what to
tell a user when some are missing.

A variant's weights are one or more entries (role -> address): the model itself and resources beside it
(Geneformer's dictionaries, UCE's model files, scGenePT's vocabulary and training screen). A variant whose
authors publish weights only on their own site has no download: its one entry is the address an admin's
import gives it. Every question about a variant's weights (which entries, which is the model, are they
all here, what is missing and where to get it) is answered here, so the runner base, the command line,
the Run and Weights pages and the admin functions give the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from czb_core.models.registry import MODEL_ROLE, ModelConfig, VariantConfig, main_role
from czb_core.progress import CancelToken, ProgressCallback

if TYPE_CHECKING:  # the cache module imports boto3: loaded when a cache is made, not when a config is read
    from czb_core.models.weights import WeightsCache

WEIGHTS_PAGE = "the Weights page"


@dataclass(frozen=True)
class VariantWeights:
    config: ModelConfig
    variant: VariantConfig
    cache: WeightsCache

    @classmethod
    def of(cls, config: ModelConfig, variant: Optional[str] = None,
           cache: Optional[WeightsCache] = None) -> "VariantWeights":
        from czb_core.models.weights import WeightsCache

        return cls(config, config.variant(variant), cache or WeightsCache())

    @property
    def label(self) -> str:
        return f"{self.config.display_name} / {self.variant.name}"

    @property
    def has_download(self) -> bool:
        return bool(self.variant.weights)

    @property
    def entries(self) -> dict[str, str]:
        """role -> address of every entry: the configured sources, or for weights without a download the
        import-only entry; empty for a variant without weights."""
        if self.variant.weights:
            return dict(self.variant.weights)
        if self.variant.weights_from:
            from czb_core.models.weights import imported_uri

            return {MODEL_ROLE: imported_uri(self.config.name, self.variant.name)}
        return {}

    @property
    def main_role(self) -> Optional[str]:
        return main_role(self.entries)

    @property
    def main_uri(self) -> Optional[str]:
        role = self.main_role
        return None if role is None else self.entries[role]

    def fetch(self, sources: dict[str, str], pinned: Optional[dict[str, str]], progress: ProgressCallback,
              cancel: Optional[CancelToken]) -> tuple[dict[str, Path], Optional[dict]]:
        """Every entry of `sources` (role -> address: `entries`, or with the model entry given by hand) on disk,
        downloading what the cache lacks, the main entry checked against the `pinned` sha256 of its files.
        Returns (role -> folder, the run record's manifest: the main entry's, with each other entry's under
        its role; None without entries)."""
        main = main_role(sources)
        dirs, manifests = {}, {}
        for role, uri in sources.items():
            dirs[role] = self.cache.fetch(uri, progress=progress, cancel=cancel,
                                          expected_sha256=pinned if role == main else None)
            manifests[role] = self.cache.manifest(uri)
        if main is None:
            return dirs, None
        return dirs, {**manifests[main], **{role: m for role, m in manifests.items() if role != main}}

    def cached(self) -> dict[str, bool]:
        """role -> whether the cache holds that entry."""
        return {role: self.cache.is_cached(uri) for role, uri in self.entries.items()}

    def cached_dirs(self) -> dict[str, Path]:
        """role -> folder of each entry the cache holds (never downloads)."""
        found = {role: self.cache.cached_files(uri) for role, uri in self.entries.items()}
        return {role: folder for role, folder in found.items() if folder is not None}

    def missing(self) -> list[str]:
        """The roles of the entries the cache lacks (all of them must be there for a run)."""
        return [role for role, here in self.cached().items() if not here]

    def status(self) -> str:
        """One word or phrase for listings: `cached`, `not cached`, `partly cached (...)`, `not needed`, or
        for a variant without a download `import needed`."""
        if not self.entries:
            return "not needed"
        missing = self.missing()
        if not missing:
            return "cached"
        if not self.has_download:
            return "import needed"
        if len(missing) < len(self.entries):
            return f"partly cached ({', '.join(missing)} missing)"
        return "not cached"

    def no_download_problem(self) -> tuple[str, str]:
        """(message, fix) for a variant whose weights have no download and are not on this server."""
        return (f"{self.label} has no weights to download: its authors publish them only on their own site.",
                f"download them from {self.variant.weights_from}; an admin imports the folder on {WEIGHTS_PAGE}, "
                "and a command-line run also takes it with --weights DIR")

    def missing_message(self) -> Optional[str]:
        """What to tell a user whose variant has entries not on this server yet, with where to get them;
        None when every entry is cached (or the variant needs none)."""
        missing = self.missing()
        if not missing:
            return None
        if not self.has_download:
            message, fix = self.no_download_problem()
            return f"{message} Fix: {fix} (`czb weights import {self.config.name} {self.variant.name} FOLDER`)."
        size = f" ({self.variant.weights_size_mb:,.0f} MB)" if self.variant.weights_size_mb else ""
        parts = f" ({', '.join(missing)})" if len(self.entries) > 1 else ""
        return (f"{self.label}: its weights{size}{parts} are not on this server yet. Download them on "
                f"{WEIGHTS_PAGE} first, or import them there if the server cannot reach their source.")
