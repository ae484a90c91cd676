"""Streamlit page: fleet overview sorted by health, one device's sensor traces with its health and
alerts over time, and the maintenance advice. Reads what the scheduler / service writes under
DSV_HOME/manufacturing/ (history.sqlite, fleet.parquet).

    streamlit run apps/manufacturing/dashboard.py
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

if __package__ in (None, ""):  # `streamlit run apps/manufacturing/dashboard.py` runs this as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd
import streamlit as st

from shared.settings import load_settings


def load_history(db: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        latest = pd.read_sql_query(
            "SELECT s.device_id, s.ts, s.health, s.alert, s.contributing_sensors FROM scores s "
            "JOIN (SELECT device_id, MAX(ts) AS ts FROM scores GROUP BY device_id) m "
            "ON s.device_id = m.device_id AND s.ts = m.ts ORDER BY s.health", conn)
        cycles = pd.read_sql_query("SELECT cycle_id, data_until, n_devices, n_scored, n_alerts, seconds "
                                   "FROM cycles ORDER BY cycle_id DESC LIMIT 200", conn)
    latest["ts"] = pd.to_datetime(latest["ts"], unit="s", utc=True)
    latest["alert"] = latest["alert"].astype(bool)
    return latest, cycles


def device_history(db: Path, device_id: str) -> pd.DataFrame:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        hist = pd.read_sql_query("SELECT ts, health, alert, contributing_sensors FROM scores "
                                 "WHERE device_id = ? ORDER BY ts", conn, params=(device_id,))
    hist["ts"] = pd.to_datetime(hist["ts"], unit="s", utc=True)
    return hist


def device_traces(data: Path, device_id: str, start, end) -> pd.DataFrame:
    if not data.exists():
        return pd.DataFrame()
    frame = pd.read_parquet(data, filters=[("device_id", "==", device_id)])
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame[(frame.ts >= start) & (frame.ts <= end)].set_index("ts").drop(columns=["device_id"])


def main() -> None:
    st.set_page_config(page_title="Manufacturing - equipment health", layout="wide")
    st.title("Equipment health")
    app_dir = load_settings().app_dir("manufacturing")
    db, data = app_dir / "history.sqlite", app_dir / "fleet.parquet"
    if not db.exists():
        st.info(f"No scoring history yet in {db}. Start `dsv manufacturing service` (or `run`).")
        return
    latest, cycles = load_history(db)
    if latest.empty:
        st.info("The scheduler has not scored any device yet.")
        return
    st.caption("Data: SYNTHETIC simulated fleet unless you pointed the scheduler at plant data.")
    c1, c2, c3 = st.columns(3)
    c1.metric("Devices", len(latest))
    c2.metric("In alert", int(latest.alert.sum()))
    c3.metric("Last cycle (s)", f"{cycles.seconds.iloc[0]:.2f}" if len(cycles) else "-")

    st.subheader("Fleet overview (worst first)")
    st.dataframe(latest, hide_index=True, use_container_width=True)

    device = st.selectbox("Device", latest.device_id.tolist())
    hist = device_history(db, device)
    st.subheader(f"{device}: health and alerts")
    st.line_chart(hist.set_index("ts")[["health"]])
    alerts = hist[hist.alert.astype(bool)]
    st.write(f"{len(alerts)} of {len(hist)} scored windows in alert"
             + (f", since {alerts.ts.iloc[0]:%Y-%m-%d %H:%M} UTC" if len(alerts) else ""))
    traces = device_traces(data, device, hist.ts.min() - pd.Timedelta(hours=2), hist.ts.max())
    if not traces.empty:
        st.subheader("Sensor traces")
        sensors = st.multiselect("Sensors", list(traces.columns), default=list(traces.columns)[:3])
        if sensors:
            st.line_chart(traces[sensors])

    st.subheader("Maintenance advice")
    row = latest[latest.device_id == device].iloc[0]
    if row.alert or st.button("Ask for advice anyway"):
        from apps.manufacturing.llm import advise, context_from_history
        from core.client import ModelClient

        settings = load_settings()
        client = ModelClient(settings.server_url, settings.api_key, timeout=20.0, max_retries=0)
        advice = advise(client, context_from_history(db, device))
        st.write(advice.text)
        st.caption(f"source: {advice.source}")
    else:
        st.write("Device not in alert.")


main()
