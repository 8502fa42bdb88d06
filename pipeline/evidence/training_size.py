"""The learning curve's summary over repeats (pure). The curve itself trains models, so it is a
training stage: `pipeline.train.learning_curve`."""

from __future__ import annotations


import pandas as pd


def learning_curve_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max AUROC and mean training events per (size, model) over repeats."""
    return (table.groupby(["size", "model"], sort=False)
            .agg(auroc=("auroc", "mean"), auroc_min=("auroc", "min"), auroc_max=("auroc", "max"),
                 events_train=("events_train", "mean"), repeats=("auroc", "size"))
            .reset_index())
