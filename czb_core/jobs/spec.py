"""What a job computes, and the key that makes a finished result reusable.

Two submissions with the same dataset (by content hash), model, variant, parameters, organism,
weights and metric options give the same results, so the second returns the first's job instead of recomputing. The
device is not part of the spec: where a job runs does not change what it means.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class JobSpec:
    dataset_sha256: str
    model: str
    variant: str
    params: dict[str, Any] = field(default_factory=dict)
    organism: Optional[str] = None
    weights: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)  # label_key, batch_key, split_key, train, test

    def to_json(self) -> str:
        """Canonical JSON: sorted keys at every level, no whitespace, so equal specs give equal text."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls(**json.loads(text))

    def key(self) -> str:
        """The cache key: sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()
