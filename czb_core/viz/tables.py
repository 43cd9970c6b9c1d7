"""Tables styled for reading: the scoreboard with its deltas to the PCA baseline coloured."""

from __future__ import annotations

import math

import pandas as pd
from pandas.io.formats.style import Styler

from czb_core.tasks.scoreboard import DELTA_PREFIX, HEADLINE

BETTER, WORSE = "background-color:#c8e6c9", "background-color:#ffcdd2"


def delta_colour(value: float) -> str:
    """Green where a run beats the baseline, red where it falls behind, nothing on a tie or a gap."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == 0:
        return ""
    return BETTER if value > 0 else WORSE


def style_scoreboard(board: pd.DataFrame) -> Styler:
    """Deltas coloured and signed, metrics to 3 decimals, run facts as whole numbers, gaps as a dash."""
    deltas = [DELTA_PREFIX + title for title, _, _ in HEADLINE]
    metrics = [title for title, _, _ in HEADLINE]
    return (board.style.map(delta_colour, subset=deltas)
            .format("{:+.3f}", subset=deltas, na_rep="—")
            .format("{:.3f}", subset=metrics, na_rep="—")
            .format("{:,.0f}", subset=["Embedding size", "Cells", "GPU memory (MB)"], na_rep="—")
            .format("{:,.1f}", subset=["Wall time (s)"], na_rep="—"))
