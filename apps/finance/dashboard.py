"""Finance fraud dashboard (Streamlit): `streamlit run apps/finance/dashboard.py`.

Reads what `dsv finance service` writes under DSV_HOME/finance/dashboard.db: scorer throughput and lag,
the score histogram, the alert queue with the adjudicator's verdicts, and labels as they arrive (the
live producer releases each synthetic label after a delay), from which per-typology detection and
precision/recall over time are computed. All data is synthetic.
"""
from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pandas as pd

if __package__ in (None, ""):  # `streamlit run apps/finance/dashboard.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def db_path() -> Path:
    from shared.settings import load_settings

    return load_settings().app_dir("finance") / "dashboard.db"


def _query(db: Path, sql: str, params=()) -> pd.DataFrame:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return pd.read_sql_query(sql, con, params=params)


def load_views(db: Path, now: float | None = None) -> dict[str, pd.DataFrame]:
    """Every table the page shows, computed from the sink (plain pandas, testable without Streamlit)."""
    now = now or time.time()
    stats = _query(db, "SELECT ts, rate, lag, batch_ms, processed, dlq FROM stats WHERE component='scorer' "
                       "ORDER BY ts DESC LIMIT 600").sort_values("ts")
    stats["time"] = pd.to_datetime(stats["ts"], unit="s")
    hist = _query(db, "SELECT bin, count FROM score_hist ORDER BY bin")
    hist["score"] = hist["bin"].map(lambda b: f"{b / 20:.2f}-{(b + 1) / 20:.2f}")
    alerts = _query(db, "SELECT a.tx_id, a.score, a.reasons, a.adj_label, a.adj_prob, a.adj_reason, a.adj_source, "
                        "a.ts FROM alerts a WHERE a.score IS NOT NULL ORDER BY a.ts DESC LIMIT 200")
    # Labels that have arrived by now, joined with what the fast tier alerted on.
    labelled = _query(db, "SELECT l.tx_id, l.label_ts, l.is_fraud, l.typology, a.score IS NOT NULL AS alerted, "
                          "a.adj_label FROM labels l LEFT JOIN alerts a ON a.tx_id = l.tx_id "
                          "WHERE l.label_ts <= ? AND (l.is_fraud = 1 OR a.score IS NOT NULL)", (now,))
    frauds = labelled[labelled["is_fraud"] == 1]
    per_typology = (frauds.groupby("typology")["alerted"].agg(["count", "mean"])
                    .rename(columns={"count": "labelled frauds", "mean": "detected share"}).reset_index())
    pr = pd.DataFrame(columns=["time", "precision", "recall"])
    if len(labelled):
        labelled = labelled.assign(minute=(labelled["label_ts"] // 60) * 60).sort_values("label_ts")
        rows = []
        for minute, _ in labelled.groupby("minute"):
            seen = labelled[labelled["minute"] <= minute]  # cumulative: labels known up to that minute
            alerted = seen[seen["alerted"] == 1]
            fraud = seen[seen["is_fraud"] == 1]
            rows.append({"time": pd.to_datetime(minute, unit="s"),
                         "precision": alerted["is_fraud"].mean() if len(alerted) else None,
                         "recall": fraud["alerted"].mean() if len(fraud) else None})
        pr = pd.DataFrame(rows)
    return {"stats": stats, "hist": hist, "alerts": alerts, "per_typology": per_typology, "pr": pr}


def render() -> None:
    import streamlit as st

    st.set_page_config(page_title="dsv finance: fraud stream", layout="wide")
    st.title("Fraud scoring stream")
    st.caption("Synthetic transactions (PaySim-style generator). Fast tier on every transaction; "
               "DeepSeek `finance` adapter adjudicates alerts off the hot path.")
    db = db_path()
    if not db.exists():
        st.info(f"No data yet at {db}. Start the service: `dsv finance service`.")
        return
    views = load_views(db)
    stats = views["stats"]
    c1, c2, c3, c4 = st.columns(4)
    last = stats.iloc[-1] if len(stats) else None
    c1.metric("Throughput (tx/s)", f"{last['rate']:.0f}" if last is not None else "-")
    c2.metric("Consumer lag", f"{int(last['lag'])}" if last is not None else "-")
    c3.metric("Batch latency (ms)", f"{last['batch_ms']:.1f}" if last is not None else "-")
    c4.metric("Scored / DLQ", f"{int(last['processed'])} / {int(last['dlq'])}" if last is not None else "-")
    if len(stats):
        st.subheader("Throughput and lag")
        st.line_chart(stats.set_index("time")[["rate", "lag"]])
    st.subheader("Score distribution")
    st.bar_chart(views["hist"].set_index("score")["count"])
    st.subheader("Alert queue")
    st.dataframe(views["alerts"].rename(columns={"adj_label": "adjudicator", "adj_prob": "P(fraud)",
                                                 "adj_reason": "adjudicator reason", "adj_source": "source"}),
                 hide_index=True)
    left, right = st.columns(2)
    left.subheader("Detection by typology (labels arrived)")
    left.dataframe(views["per_typology"], hide_index=True)
    right.subheader("Precision / recall as labels arrive")
    if len(views["pr"]):
        right.line_chart(views["pr"].set_index("time")[["precision", "recall"]])
    else:
        right.write("No labels have arrived yet.")


render()
