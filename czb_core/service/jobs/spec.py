"""What a job computes, and the key that makes a finished result reusable.

Two submissions with the same dataset (by content hash), model, variant, parameters (those that differ
from the defaults), organism and weights give the same embedding, so the second returns the first's job
instead of recomputing. Neither the device nor the metric options are part of the spec: where a job runs
does not change what it computes, and scoring is a run of its own (`scoring.py`). `stream` (an admin's
choice to read the matrix in row blocks whatever its size) is: it is how a streamed result is compared
with the in-memory one, and it is left out of the key when off, so earlier keys stay valid.
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
    stream: bool = False

    def to_json(self) -> str:
        """Canonical JSON: sorted keys at every level, no whitespace, so equal specs give equal text."""
        data = asdict(self)
        if not data["stream"]:
            del data["stream"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        data = json.loads(text)
        data.pop("metrics", None)  # jobs stored before scoring became a run of its own
        return cls(**data)

    def key(self) -> str:
        """The cache key: sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()
