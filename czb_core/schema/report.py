"""A validation report: every problem a dataset has for one model, each with a fix.

cz-benchmarks stopped at the first error; a scientist fixing a dataset wants all of them at once, and
the app's compatibility matrix wants one status per check. Checks add `Problem`s to a
`ValidationReport`; `raise_for_errors()` turns the blocking ones into one `DatasetValidationError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Optional

from czb_core.errors import DatasetValidationError
from czb_core.types import Organism


class Severity(str, Enum):
    ERROR = "error"  # the model cannot run on this dataset
    WARNING = "warning"  # it can run, but results may be poor or something was assumed
    INFO = "info"  # what was detected or will be done

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


# The checks every single-cell validator runs, in display order (the app's matrix columns).
CHECKS = (
    "organism",
    "gene ids",
    "obs keys",
    "var keys",
    "raw counts",
    "finite values",
    "empty cells",
    "duplicate genes",
    "vocabulary",
)


@dataclass(frozen=True)
class Problem:
    check: str
    code: str
    severity: Severity
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


@dataclass
class ValidationReport:
    """All problems of one dataset for one model variant; `status(check)` drives the traffic lights."""

    model: str
    variant: Optional[str] = None
    problems: list[Problem] = field(default_factory=list)
    checks_run: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # detected organism, gene-id system, overlap, ...
    organism: Optional[Organism] = None  # given, or detected from the gene ids
    pending: str = ""  # what must happen before "can run" holds, e.g. "its weights (1,259 MB) are downloaded"

    def add(self, check: str, code: str, severity: Severity, message: str, fix: str = "") -> None:
        self.problems.append(Problem(check, code, Severity(severity), message, fix))

    def ran(self, check: str) -> None:
        if check not in self.checks_run:
            self.checks_run.append(check)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing blocks the run (warnings and infos allowed)."""
        return not self.errors

    @property
    def verdict(self) -> str:
        """"blocked", "can run", or "can run once ..." when something (a download) must happen first."""
        if not self.ok:
            return "blocked"
        return f"can run once {self.pending}" if self.pending else "can run"

    def status(self, check: str) -> str:
        """`ok`, `info`, `warning`, `error`, or `not run` for one check."""
        found = [p.severity for p in self.problems if p.check == check]
        if found:
            return max(found, key=lambda s: s.rank).value
        return "ok" if check in self.checks_run else "not run"

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = [f"- [{p.code}] {p.message}" + (f" Fix: {p.fix}" if p.fix else "") for p in self.errors]
            raise DatasetValidationError(
                f"{self.model}: the dataset cannot be used ({len(self.errors)} problem(s)):\n"
                + "\n".join(lines),
                report=self,
            )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "variant": self.variant,
            "ok": self.ok,
            "verdict": self.verdict,
            "checks": {c: self.status(c) for c in self.checks_run},
            "problems": [p.to_dict() for p in self.problems],
            "facts": self.facts,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ValidationReport":
        """The report back from `to_dict()`: the app caches reports as plain dicts (they are pickled for
        every caller) and summarises them as reports. The checks that ran and their problems come back;
        the decided organism does not (`to_dict` keeps it only as a fact)."""
        problems = [Problem(p["check"], p["code"], Severity(p["severity"]), p["message"], p.get("fix", ""))
                    for p in data.get("problems", [])]
        return cls(model=data["model"], variant=data.get("variant"), problems=problems,
                   checks_run=list(data.get("checks", {})), facts=dict(data.get("facts", {})),
                   pending=data.get("pending", ""))

    def format_text(self) -> str:
        """The plain-text report the CLI prints."""
        head = f"{self.model}" + (f" / {self.variant}" if self.variant else "")
        verdict = (f"OK: nothing blocks a run{'; it ' + self.verdict if self.pending else ''}" if self.ok
                   else f"BLOCKED: {len(self.errors)} error(s)")
        lines = [f"{head}: {verdict}"]
        for key, value in self.facts.items():
            lines.append(f"  {key}: {value}")
        for p in sorted(self.problems, key=lambda p: -p.severity.rank):
            lines.append(f"  {p.severity.value.upper():7s} [{p.code}] {p.message}")
            if p.fix:
                lines.append(f"          fix: {p.fix}")
        return "\n".join(lines)
