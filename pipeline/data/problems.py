"""What a cohort file's problems are reported as: `CohortError` and the `CohortProblems`.

Kept apart from the reading and the parsing so that a caller that only handles a refusal (the CLI)
imports the error without them. A report names the column, the rule and the file rows, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_REPORTED_ROWS = 5
MAX_REPORT_LINES = 50


class CohortError(Exception):
    """A cohort file that cannot be used; the message is safe to show (no patient values)."""

    def __init__(self, message: str, report: "CohortProblems | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class CohortProblems:
    """Failures as (row, column, rule); `row` is the 1-based data row (file line minus header)."""

    failures: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["row", "column", "rule"])
    )
    n_rows: int = 0
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def invalid_rows(self) -> np.ndarray:
        return np.sort(self.failures["row"].unique())

    @property
    def ok(self) -> bool:
        return bool(self.failures.empty)

    def summary(self) -> str:
        if self.ok:
            return f"{self.n_rows} rows, all valid"
        lines = [
            f"{len(self.invalid_rows)} of {self.n_rows} rows are invalid "
            f"({len(self.failures)} failures):"
        ]
        grouped = self.failures.groupby(["column", "rule"], sort=True)["row"]
        for i, ((column, rule), rows) in enumerate(grouped):
            if i >= MAX_REPORT_LINES:
                lines.append(f"  ... and {grouped.ngroups - MAX_REPORT_LINES} more column/rule pairs")
                break
            shown = ", ".join(str(r) for r in sorted(rows)[:MAX_REPORTED_ROWS])
            more = f" and {len(rows) - MAX_REPORTED_ROWS} more" if len(rows) > MAX_REPORTED_ROWS else ""
            lines.append(f"  column '{column}': {rule}: {len(rows)} rows (rows {shown}{more})")
        return "\n".join(lines)

    def reasons_by_row(self) -> pd.Series:
        return (
            self.failures.assign(reason=self.failures["column"] + ": " + self.failures["rule"])
            .groupby("row")["reason"]
            .agg("; ".join)
        )
