"""`dsv manufacturing` end to end through the real CLI entry point."""
from __future__ import annotations

import pandas as pd

from core.cli import main


def test_simulate_then_score_writes_one_row_per_device_window(tmp_path, trained_model_dir, capsys):
    data = tmp_path / "fleet.csv"
    assert main(["manufacturing", "simulate", "--devices", "4", "--days", "1", "--seed", "3",
                 "--out", str(data)]) == 0
    labels = pd.read_csv(tmp_path / "fleet.labels.csv")
    assert list(labels.columns) == ["device_id", "fault", "fault_sensor", "onset_ts", "failure_ts"]
    out = tmp_path / "scores.csv"
    assert main(["manufacturing", "score", "--input", str(data), "--output", str(out),
                 "--model-dir", str(trained_model_dir)]) == 0
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["device_id", "ts", "health", "alert", "contributing_sensors"]
    assert scores.device_id.nunique() == 4 and scores.health.between(0, 100).all()
    # 288 samples per day, 24-sample windows every 3 samples (a device may fail earlier).
    assert scores.groupby("device_id").size().max() == (288 - 24) // 3 + 1


def test_bad_input_exits_2_with_file_line_and_column(tmp_path, trained_model_dir, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("device_id,ts,temperature\nM1,1767225600,40\nM1,1767225900,??\n")
    code = main(["manufacturing", "score", "--input", str(bad), "--output", str(tmp_path / "s.csv"),
                 "--model-dir", str(trained_model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:3" in err and "'temperature'" in err
    assert not (tmp_path / "s.csv").exists()
