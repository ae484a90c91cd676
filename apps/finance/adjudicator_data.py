"""The adjudicator's inputs built offline from a column set, exactly as the live service builds them.

A ``FlagSet`` holds the transactions a fast tier flags in a stream (score at or above its review
threshold), each as the ``fraud.alerts`` record the scorer would write (``pipeline.flag_record``) with
its episode neighbours (``episode.neighbours_from_columns``, the offline twin of ``EpisodeBuffer``). The
curriculum turns flag sets into chat records for the fine-tune; ``adjudicator_eval`` turns the held-out
stream's flag set into prompts for the model server. Synthetic data only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from apps.finance.episode import WINDOW_S, Neighbour, Thresholds, neighbours_from_columns
from apps.finance.llm import chat_record, score_prompt
from apps.finance.model import MODEL_VERSION, reasons_for
from apps.finance.pipeline import flag_record

_TX_FIELDS = ("tx_id", "ts", "account", "counterparty", "amount", "currency", "type", "channel", "country",
              "device", "mcc")


@dataclass
class FlagSet:
    rows: np.ndarray                    # indices into the column set
    alerts: list[dict[str, Any]]        # fraud.alerts records
    neighbours: list[list[Neighbour]]
    window_s: float = WINDOW_S

    def __len__(self) -> int:
        return len(self.rows)

    def prompts(self) -> list[str]:
        return [score_prompt(a, n, self.window_s) for a, n in zip(self.alerts, self.neighbours)]

    def chat_records(self, labels: np.ndarray, typologies: np.ndarray | None = None) -> list[dict]:
        """Fine-tuning records; ``labels`` (and ``typologies``, for typology-specific reasons) are
        indexed like the column set."""
        return [chat_record(a, n, bool(labels[r]), str(typologies[r]) if typologies is not None else "",
                            self.window_s)
                for a, n, r in zip(self.alerts, self.neighbours, self.rows.tolist())]

    def subset(self, keep: np.ndarray) -> FlagSet:
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return FlagSet(self.rows[idx], [self.alerts[i] for i in idx.tolist()],
                       [self.neighbours[i] for i in idx.tolist()], self.window_s)


def flag_set(cols: dict[str, Any], X: np.ndarray, scores: np.ndarray, thresholds: Thresholds,
             model: str = MODEL_VERSION, window_s: float = WINDOW_S) -> FlagSet:
    """The flags of a time-sorted column set scored by a fast tier (``scores`` as it gives them)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.flatnonzero(scores >= thresholds.review)
    reasons = reasons_for(X, rows)
    written = np.round(scores, 5)  # the scorer compares unrounded scores and writes them rounded
    alerts = []
    for r, why in zip(rows.tolist(), reasons):
        tx = {k: (cols[k][r].item() if hasattr(cols[k][r], "item") else cols[k][r]) for k in _TX_FIELDS}
        alerts.append(flag_record(tx["tx_id"], float(written[r]), bool(scores[r] >= thresholds.alert), why, model,
                                  tx, float(thresholds.alert)))
    return FlagSet(rows, alerts, neighbours_from_columns(cols, scores, rows, thresholds, window_s), window_s)
