"""What a user reads first about a dataset: one line per model and each distinct problem once.

Checking a dataset against every variant of every model gives dozens of reports (scVI alone has seven
variants, six of which fail the same way); listed one by one they bury the answer. A model's line gives its
best variant's verdict and how many variants can run; a problem shared by variants, or by models, is
one item that says where it applies. Reports are keyed "<model> / <variant>" (the registry name, then
the variant), as the app's validation cache keys them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from czb_core.schema.report import Severity, ValidationReport

KEY_SEPARATOR = " / "
MODEL_SLOT = "\x00model\x00"  # where a problem's text names its model, so models can share one item
VARIANT_SLOT = "\x00variant\x00"  # where it names "<model> / <variant>", so variants can share one item
MAX_VARIANTS_LISTED = 3

# The page's actions that resolve a problem, by problem code: a new dataset version ("map_symbols",
# "var_column"), the dataset's organism ("set_organism"), or a run parameter ("batch_params", only for
# models that declare `batch_key`). Problems without an entry keep their written fix.
FIX_ACTIONS: dict[str, tuple[str, ...]] = {
    "symbols_not_ids": ("map_symbols", "var_column"),
    "no_ensembl_ids": ("var_column",),
    "ids_not_symbols": ("var_column",),
    "organism_unknown": ("set_organism",),
    "organism_mismatch": ("set_organism",),
    "missing_obs_key": ("batch_params",),
}


def split_report_key(key: str) -> tuple[str, str]:
    """"scvi / homo_sapiens" -> ("scvi", "homo_sapiens"); a key without a variant names the model alone."""
    model, _, variant = key.partition(KEY_SEPARATOR)
    return model, variant


def by_model(reports: Mapping[str, ValidationReport]) -> dict[str, dict[str, ValidationReport]]:
    """model -> variant -> report, keeping the order of `reports` (the registry's)."""
    grouped: dict[str, dict[str, ValidationReport]] = {}
    for key, report in reports.items():
        model, variant = split_report_key(key)
        grouped.setdefault(model, {})[variant] = report
    return grouped


def _rank(report: ValidationReport) -> tuple:
    """Sort key of a variant, best first: runs now, then runs after a download, then fewest problems."""
    return not report.ok, bool(report.pending), len(report.errors), len(report.warnings)


@dataclass(frozen=True)
class ModelLine:
    """One model's verdict: its best variant and how many of its variants can run."""

    model: str  # the registry name, e.g. "scvi"
    display_name: str
    verdicts: tuple[tuple[str, str], ...]  # (variant, verdict), in registry order
    best_variant: str
    best_verdict: str
    n_runnable: int

    @property
    def n_variants(self) -> int:
        return len(self.verdicts)

    @property
    def status(self) -> str:
        """"ready" (a variant runs now), "pending" (one runs once something happens first) or "blocked"."""
        if not self.n_runnable:
            return "blocked"
        return "ready" if self.best_verdict == "can run" else "pending"

    @property
    def text(self) -> str:
        """"scVI: 1 of 7 variants can run", plus the best variant's condition when it has one."""
        if self.n_variants == 1:
            return f"{self.display_name}: {self.best_verdict}"
        head = f"{self.display_name}: {self.n_runnable} of {self.n_variants} variants can run"
        return head if self.status != "pending" else f"{head}; {self.best_variant} {self.best_verdict}"


def summarize_by_model(reports: Mapping[str, ValidationReport]) -> list[ModelLine]:
    """One line per model, in the order of `reports`."""
    lines = []
    for model, variants in by_model(reports).items():
        best = min(variants, key=lambda v: _rank(variants[v]))  # min keeps the first of equals
        lines.append(ModelLine(
            model=model,
            display_name=variants[best].model,
            verdicts=tuple((v, r.verdict) for v, r in variants.items()),
            best_variant=best,
            best_verdict=variants[best].verdict,
            n_runnable=sum(r.ok for r in variants.values()),
        ))
    return lines


@dataclass(frozen=True)
class Occurrence:
    """The variants of one model that have a problem."""

    model: str
    display_name: str
    variants: tuple[str, ...]
    n_variants: int  # how many variants the model has

    def describe(self) -> str:
        """"scVI: homo_sapiens, mus_musculus (2 of 7 variants)", "scGenePT (all 14 variants)", "PCA baseline"."""
        if self.n_variants == 1:
            return self.display_name
        if len(self.variants) == self.n_variants:
            return f"{self.display_name} (all {self.n_variants} variants)"
        listed = ", ".join(self.variants[:MAX_VARIANTS_LISTED]) + (
            ", …" if len(self.variants) > MAX_VARIANTS_LISTED else "")
        return f"{self.display_name}: {listed} ({len(self.variants)} of {self.n_variants} variants)"


@dataclass(frozen=True)
class ProblemGroup:
    """One distinct problem and every model variant that has it."""

    check: str
    code: str
    severity: Severity
    message_templates: tuple[str, ...]  # messages with the slots where they named the model or variant
    fix_templates: tuple[str, ...]
    where: tuple[Occurrence, ...]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(o.model for o in self.where)

    @property
    def n_variants(self) -> int:
        return sum(len(o.variants) for o in self.where)

    def _render(self, template: str) -> str:
        """Name the model when one model has the problem ("the model" when several do), and the variant
        when one variant has it ("this variant" when several do)."""
        first = self.where[0]
        variant = f"{first.display_name} / {first.variants[0]}" if self.n_variants == 1 else "this variant"
        model = first.display_name if len(self.where) == 1 else "the model"
        text = template.replace(VARIANT_SLOT, variant).replace(MODEL_SLOT, model)
        return text[:1].upper() + text[1:] if text.startswith(("the model", "this variant")) else text

    @property
    def messages(self) -> tuple[str, ...]:
        return tuple(self._render(m) for m in self.message_templates)

    @property
    def message(self) -> str:
        """The messages as one text (several when they share a check, code and the variants they apply to)."""
        return " ".join(self.messages)

    def split_messages(self) -> tuple[str, tuple[str, ...]]:
        """The clauses all messages share, and what each adds: "scVI builds each cell's batch from obs
        columns ...;" and ("the dataset lacks 'assay'.", "the dataset lacks 'donor_id'."). Messages that
        share no whole clause come back whole, after an empty shared part."""
        messages = self.messages
        shared = os.path.commonprefix(list(messages)) if len(messages) > 1 else ""
        cut = shared.rfind("; ")
        if cut < 0:
            return "", messages
        return shared[: cut + 1], tuple(m[cut + 2:] for m in messages)

    @property
    def fix(self) -> str:
        """The written fixes, each once."""
        return "; ".join(dict.fromkeys(self._render(f) for f in self.fix_templates if f))

    @property
    def applies_to(self) -> str:
        return "; ".join(o.describe() for o in self.where)

    @property
    def actions(self) -> tuple[str, ...]:
        """The page's actions that resolve this problem (see FIX_ACTIONS)."""
        return FIX_ACTIONS.get(self.code, ())


def _template(text: str, report: ValidationReport) -> str:
    if not report.model:
        return text
    if report.variant:
        text = text.replace(f"{report.model} / {report.variant}", VARIANT_SLOT)
    return text.replace(report.model, MODEL_SLOT)


def group_problems(reports: Mapping[str, ValidationReport],
                   severities: Sequence[Severity] = (Severity.ERROR, Severity.WARNING)) -> list[ProblemGroup]:
    """Each distinct problem once (same check, code, severity, and text once the model's and variant's
    names are set aside), with the variants that have it; problems that then share their check, code and
    variants are one item with several messages (e.g. the four batch columns a Census model misses: one
    choice of batch resolves them all). Blocking problems first, then those affecting most variants. A
    report that lists the same problem twice counts once."""
    models = by_model(reports)
    found: dict[tuple, dict[str, list[str]]] = {}  # problem key -> model -> variants
    for model, variants in models.items():
        for variant, report in variants.items():
            for p in report.problems:
                if p.severity not in severities:
                    continue
                key = (p.check, p.code, p.severity, _template(p.message, report), _template(p.fix, report))
                listed = found.setdefault(key, {}).setdefault(model, [])
                if variant not in listed:
                    listed.append(variant)
    merged: dict[tuple, list[tuple[str, str]]] = {}  # (check, code, severity, where) -> (message, fix)
    for (check, code, severity, message, fix), where in found.items():
        frozen_where = tuple((model, tuple(variants)) for model, variants in where.items())
        merged.setdefault((check, code, severity, frozen_where), []).append((message, fix))
    groups = [
        ProblemGroup(check, code, severity, tuple(m for m, _ in texts), tuple(f for _, f in texts), tuple(
            Occurrence(model, next(iter(models[model].values())).model, variants, len(models[model]))
            for model, variants in where))
        for (check, code, severity, where), texts in merged.items()
    ]
    return sorted(groups, key=lambda g: (-g.severity.rank, -g.n_variants))
