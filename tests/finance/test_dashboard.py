"""The Streamlit page renders what the service writes (AppTest runs the real script)."""
from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from apps.finance.sink import Sink

PAGE = str(Path(__file__).resolve().parents[2] / "apps" / "finance" / "dashboard.py")


def _fill(db: Path) -> None:
    sink = Sink(db)
    sink.record_stats("scorer", 5000, 812.0, 37, 4.2, 3)
    tx = {"ts": 1.0, "amount": 3.0}
    alerts = [{"tx_id": f"t{i}", "score": 0.9, "alert": True, "reasons": ["burst"], "model": "m", "tx": tx}
              for i in range(4)]
    sink.record_scores([0.01, 0.02, 0.5, 0.9, 0.95], alerts)
    sink.record_adjudications([{"tx_id": "t0", "label": "fraud", "fraud_probability": 0.8,
                                "reason": "card testing burst", "source": "model"}])
    past = time.time() - 5
    sink.record_labels([("t0", 1.0, past, 1, "card_testing"), ("t1", 1.0, past, 0, ""),
                        ("t9", 1.0, past, 1, "money_mule"), ("t2", 1.0, time.time() + 3600, 1, "geo_jump")])
    sink.close()


def test_dashboard_renders_service_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DSV_HOME", str(tmp_path))
    _fill(tmp_path / "finance" / "dashboard.db")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.metric[0].value == "812" and at.metric[1].value == "37"
    frames = [df.value for df in at.dataframe]
    queue = frames[0]
    assert len(queue) == 4 and "card testing burst" in set(queue["adjudicator reason"].dropna())
    typ = frames[1].set_index("typology")
    # money_mule arrived but was never alerted; geo_jump's label has not arrived yet
    assert typ.loc["card_testing", "detected share"] == 1.0 and typ.loc["money_mule", "detected share"] == 0.0
    assert "geo_jump" not in typ.index


def test_dashboard_without_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DSV_HOME", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "No data yet" in at.info[0].value
