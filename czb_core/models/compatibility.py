"""Does a dataset fit a model variant? One report per variant, and the matrix of all of them.

The CLI's `validate`, the Validate page and the Run page ask the same question and get the same answer:
the data manager's facts judged by the variant's validator, plus the checks that need its weights when
those are cached already (never downloading anything). One line per model summarises its variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from czb_core.errors import ConfigError
from czb_core.io.header import DatasetHeader
from czb_core.models.registry import ModelConfig, discover_models
from czb_core.schema.report import Severity, ValidationReport
from czb_core.types import Organism


def check_variant(header: DatasetHeader, config: ModelConfig, variant: Optional[str] = None,
                  organism: Optional[Organism] = None, params: Optional[dict[str, Any]] = None) -> ValidationReport:
    """The full report of one variant with these parameters; an unknown variant or a bad parameter
    raises ConfigError (that is a wrong question, not a property of the data)."""
    implementation = config.load_implementation()(config, variant, **(params or {}))
    manager = implementation.data_manager(header, organism)
    report = implementation.check(manager)
    implementation.check_cached_weights(manager, report)
    return report


@dataclass
class ModelVerdict:
    """One model's line: its best variant's verdict and how many variants can run."""

    model: str
    display_name: str
    reports: dict[str, ValidationReport]  # variant -> report

    @property
    def runnable(self) -> list[str]:
        return [v for v, r in self.reports.items() if r.ok]

    @property
    def best_variant(self) -> str:
        return (self.runnable or list(self.reports))[0]

    @property
    def summary(self) -> str:
        n, total = len(self.runnable), len(self.reports)
        if total == 1:
            return "can run" if n else "blocked"
        return f"{n} of {total} variants can run"


def compatibility_matrix(header: DatasetHeader, organism: Optional[Organism] = None) -> list[ModelVerdict]:
    """Every model with every variant's report, in registry order (the PCA baseline first); a model whose
    runner cannot be loaded is listed as blocked with the reason."""
    verdicts = []
    for name, config in discover_models().items():
        reports = {}
        for variant in config.variants:
            try:
                reports[variant] = check_variant(header, config, variant, organism)
            except ConfigError as exc:
                reports[variant] = ValidationReport(model=config.display_name, variant=variant)
                reports[variant].add("model", "runner_unavailable", Severity.ERROR, str(exc),
                                     "ask the server's administrator to repair or remove this model")
        verdicts.append(ModelVerdict(name, config.display_name, reports))
    return verdicts
