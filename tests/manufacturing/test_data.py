"""The input contract: bad input gives a clear error naming file, line/row and column; messy but
legitimate plant data (NaN, missing sensors, out-of-order and repeated timestamps) is handled and
counted."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apps.manufacturing.data import read_table, validate_frame
from shared.io import InputError

HEADER = "device_id,ts,vibration_rms,temperature\n"


def write(tmp_path, text, name="in.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_device_id_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "ts,vibration_rms\n1767225600,1.0\n")
    with pytest.raises(InputError) as err:
        read_table(path)
    assert str(path) in str(err.value) and "'device_id'" in str(err.value)


def test_garbage_value_names_line_and_column(tmp_path):
    path = write(tmp_path, HEADER + "M1,1767225600,1.0,40\nM1,1767225900,1.1,41\nM1,1767226200,1.2,hot\n")
    with pytest.raises(InputError) as err:
        read_table(path)
    msg = str(err.value)
    assert f"{path}:4" in msg and "'temperature'" in msg and "hot" in msg


def test_bad_timestamp_names_line_and_column(tmp_path):
    path = write(tmp_path, HEADER + "M1,yesterday,1.0,40\n")
    with pytest.raises(InputError, match=r"in\.csv:2: column 'ts'"):
        read_table(path)


def test_skip_bad_drops_and_counts_rows(tmp_path):
    path = write(tmp_path, HEADER + "M1,1767225600,1.0,40\n,1767225900,1.1,41\nM1,1767226200,x,42\n"
                 "M1,not-a-time,1.0,40\n")
    frame, report = read_table(path, skip_bad=True)
    assert len(frame) == 1 and report.n_bad_rows == 3
    assert any(":3:" in r and "device_id" in r for r in report.bad_rows)
    assert any(":4:" in r and "vibration_rms" in r for r in report.bad_rows)


def test_messy_but_valid_data_is_handled_and_flagged(tmp_path):
    # ISO and epoch timestamps mixed, rows out of order, one timestamp repeated (last wins), a NaN,
    # and device M2 has no temperature sensor at all.
    path = write(tmp_path, HEADER +
                 "M1,2026-01-01T00:10:00Z,1.2,41\n"
                 "M1,1767225600,1.0,40\n"
                 "M1,1767225900,1.1,\n"
                 "M1,1767225900,1.15,40.5\n"
                 "M2,1767225600,2.0,\n"
                 "M2,1767225900,2.1,NaN\n")
    frame, report = read_table(path)
    assert report.out_of_order == 1 and report.duplicate_timestamps == 1
    assert report.missing_sensors == {"M2": ["temperature"]}
    assert report.nan_values["temperature"] == 2
    m1 = frame[frame.device_id == "M1"]
    assert list(m1.ts) == [1767225600, 1767225900, 1767226200]          # sorted, ISO == epoch
    assert m1.vibration_rms.tolist()[1] == 1.15                          # the repeated ts kept the last


def test_parquet_garbage_names_row(tmp_path):
    df = pd.DataFrame({"device_id": ["A", "A"], "ts": [1767225600, 1767225900],
                       "vibration_rms": ["1.0", "broken"]})
    path = tmp_path / "in.parquet"
    df.to_parquet(path)
    with pytest.raises(InputError, match=r"in\.parquet row 1: column 'vibration_rms'"):
        read_table(path)


def test_unreadable_file_is_an_input_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="broken.parquet"):
        read_table(path)


def test_validate_frame_keeps_unknown_sensor_as_nan():
    df = pd.DataFrame({"device_id": ["A"], "ts": [1767225600.0], "rpm": [1800.0]})
    clean, report = validate_frame(df, "mem", sensors=["rpm", "pressure"])
    assert np.isnan(clean["pressure"].iloc[0]) and report.missing_sensors == {"A": ["pressure"]}


def test_parquet_timestamp_column_is_accepted(tmp_path):
    df = pd.DataFrame({"device_id": ["A", "A"],
                       "ts": pd.to_datetime(["2026-01-01T00:05:00Z", "2026-01-01T00:00:00Z"], utc=True),
                       "rpm": [1800.0, 1790.0]})
    path = tmp_path / "typed.parquet"
    df.to_parquet(path)
    frame, report = read_table(path)
    assert frame.ts.tolist() == [1767225600.0, 1767225900.0] and report.out_of_order == 1
