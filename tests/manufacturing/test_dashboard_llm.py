"""The Streamlit page on a real scheduler history (AppTest), and the advice text: the labelled
template when the model server is down, the real `manufacturing` adapter when it is up."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from apps.manufacturing.llm import (
    CHECK_FAILED_LABEL,
    FALLBACK_LABEL,
    AlertContext,
    advice_problems,
    advise,
    build_advice_dataset,
    missing_sensors,
    template_advice,
)
from apps.manufacturing.scheduler import FileSource, HistoryStore, Scheduler, SchedulerConfig
from shared.broker import free_port
from shared.io import read_jsonl

DASHBOARD = str(Path(__file__).resolve().parents[2] / "apps" / "manufacturing" / "dashboard.py")


@pytest.fixture()
def service_home(tmp_path, monkeypatch, trained_model, heldout_fleet):
    """DSV_HOME/manufacturing as the service leaves it: fleet.parquet + history.sqlite (3 cycles)."""
    monkeypatch.setenv("DSV_HOME", str(tmp_path))
    monkeypatch.setenv("DSV_SERVER_URL", f"http://127.0.0.1:{free_port()}/v1")   # nothing listens there
    app = tmp_path / "manufacturing"
    app.mkdir()
    frame = heldout_fleet.to_frame()
    frame[frame.device_id.isin(heldout_fleet.device_ids[:6])].to_parquet(app / "fleet.parquet", index=False)
    sched = Scheduler(trained_model, FileSource(app / "fleet.parquet", trained_model.cfg),
                      HistoryStore(app / "history.sqlite"), SchedulerConfig(interval_s=0, replay=True))
    sched.run(max_cycles=3)
    sched.store.close()
    return app


def test_dashboard_shows_fleet_sorted_by_health_and_advice(service_home):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(DASHBOARD, default_timeout=60).run()
    assert not at.exception
    fleet = at.dataframe[0].value
    assert len(fleet) == 6 and fleet.health.is_monotonic_increasing
    assert at.metric[0].value == "6"
    if at.button:
        at.button[0].click().run()
    advice = [m.value for m in at.markdown if FALLBACK_LABEL in m.value]
    assert advice, "the advice section should show the labelled template (server down)"


def test_template_advice_reads_the_sensors():
    ctx = AlertContext("M7", 22.0, -40.0, 2.0, [("temperature", 6.5), ("current", 2.4)], True)
    text = template_advice(ctx)
    assert "M7" in text and "cooling" in text and "within 24 h" in text
    assert advice_problems(text, ctx) == []            # the fallback passes the adapter's check too
    dead = AlertContext("M8", 10.0, -60.0, 2.0, [("pressure", -12.0)], True)
    assert "sensor" in template_advice(dead) and advice_problems(template_advice(dead), dead) == []


def test_advice_dataset_is_chat_records(tmp_path):
    n = build_advice_dataset(tmp_path / "advice.jsonl", devices=20, days=3)
    records = list(read_jsonl(tmp_path / "advice.jsonl"))
    assert n == len(records) > 5
    roles = [m["role"] for m in records[0]["messages"]]
    assert roles == ["system", "user", "assistant"] and "Deviating sensors" in records[0]["messages"][1]["content"]


def test_advice_from_the_real_model_server(model_server):
    from core.client import ModelClient

    client = ModelClient(model_server.base_url, model_server.api_keys["manufacturing"], timeout=60)
    ctx = AlertContext("M1", 30.0, -35.0, 2.0, [("vibration_kurtosis", 5.1)], True)
    advice = advise(client, ctx)
    # The fixture's adapter is untrained: the server answers, but its text fails the check (it
    # does not name the deviating sensor), so the template replaces it, labelled as such.
    assert advice.source == "fallback-check" and advice.text.startswith(CHECK_FAILED_LABEL)
    assert "vibration_kurtosis" in advice.text and FALLBACK_LABEL not in advice.text


def test_the_sensor_check_wants_every_deviating_sensor_as_a_word():
    ctx = AlertContext("M2", 20.0, -30.0, 2.0, [("temperature", 5.0), ("vibration_rms", 2.2)], True)
    good = "The temperature and vibration_rms readings are off normal for this regime. Check cooling."
    assert missing_sensors(good, ctx) == []
    assert missing_sensors("The temperature is high. Check cooling.", ctx) == ["vibration_rms"]
    # A longer name containing the sensor's name is not the sensor.
    assert missing_sensors("temperature_2 and vibration_rms_x", ctx) == ["temperature", "vibration_rms"]
    assert advice_problems(good, ctx) == []
    # Looping text that happens to contain the names (what a barely trained adapter writes) fails.
    loop = "The temperature and vibration_rms reading isading isading isading isading isading is"
    assert advice_problems(loop, ctx) == ["repeats itself"]
    # The adapter's actual best answer at 240 steps: a short loop inside otherwise varied text.
    short_loop = ("The temperature reading isading isading isading is likely at f trends. elements "
                  "itime. keeping vibration_rms reading is likely. Severe shaft misalignment.")
    assert advice_problems(short_loop, ctx) == ["repeats itself"]
    assert advice_problems(good + " 正常范围", ctx) == ["non-ASCII text in an English answer"]


def test_advice_training_answers_name_the_prompts_sensors(tmp_path):
    build_advice_dataset(tmp_path / "advice.jsonl", devices=30, days=3)
    with_sensors = 0
    for rec in read_jsonl(tmp_path / "advice.jsonl"):
        user, answer = rec["messages"][1]["content"], rec["messages"][2]["content"]
        names = re.findall(r"([\w.-]+) [+-][\d.]+ sigma", user)     # none when nothing is above 2 sigma
        assert advice_problems(answer, AlertContext("x", 0, 0, 0, [(n, 0.0) for n in names], True)) == []
        with_sensors += bool(names)
    assert with_sensors > 5
