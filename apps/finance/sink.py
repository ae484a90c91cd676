"""What the finance service writes for the dashboard: a small SQLite file under DSV_HOME/finance/.

Only low-volume facts go here (per-second stats, the score histogram, alerts and their adjudications,
labels as they 'arrive'); the full score stream stays in Kafka. WAL mode lets the dashboard read while
the scorer, adjudicator and producer write.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS stats (ts REAL, component TEXT, processed INTEGER, rate REAL, lag INTEGER,
                                  batch_ms REAL, dlq INTEGER);
CREATE TABLE IF NOT EXISTS score_hist (bin INTEGER PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (tx_id TEXT PRIMARY KEY, ts REAL, tx_ts REAL, score REAL, reasons TEXT,
                                   tx TEXT, adj_label TEXT, adj_prob REAL, adj_reason TEXT, adj_source TEXT,
                                   adj_ts REAL);
CREATE TABLE IF NOT EXISTS labels (tx_id TEXT PRIMARY KEY, tx_ts REAL, label_ts REAL, is_fraud INTEGER,
                                   typology TEXT);
CREATE INDEX IF NOT EXISTS labels_ts ON labels(label_ts);
"""
N_BINS = 20


class Sink:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def record_stats(self, component: str, processed: int, rate: float, lag: int, batch_ms: float,
                     dlq: int = 0) -> None:
        with self.db:
            self.db.execute("INSERT INTO stats VALUES (?,?,?,?,?,?,?)",
                            (time.time(), component, processed, rate, lag, batch_ms, dlq))

    def record_scores(self, scores: list[float], alerts: list[dict]) -> None:
        counts = np.bincount(np.minimum((np.asarray(scores) * N_BINS).astype(int), N_BINS - 1), minlength=N_BINS)
        now = time.time()
        with self.db:
            self.db.executemany("INSERT INTO score_hist VALUES (?,?) ON CONFLICT(bin) DO UPDATE SET "
                                "count = count + excluded.count",
                                [(i, int(c)) for i, c in enumerate(counts) if c])
            self.db.executemany(
                "INSERT OR IGNORE INTO alerts (tx_id, ts, tx_ts, score, reasons, tx) VALUES (?,?,?,?,?,?)",
                [(a["tx_id"], now, a["tx"].get("ts"), a["score"], json.dumps(a["reasons"]),
                  json.dumps(a["tx"])) for a in alerts])

    def record_adjudications(self, rows: list[dict]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO alerts (tx_id, ts, adj_label, adj_prob, adj_reason, adj_source, adj_ts) "
                "VALUES (:tx_id, :now, :label, :fraud_probability, :reason, :source, :now) "
                "ON CONFLICT(tx_id) DO UPDATE SET adj_label=excluded.adj_label, adj_prob=excluded.adj_prob, "
                "adj_reason=excluded.adj_reason, adj_source=excluded.adj_source, adj_ts=excluded.adj_ts",
                [{**r, "now": time.time()} for r in rows])

    def record_labels(self, rows: list[tuple[str, float, float, int, str]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO labels VALUES (?,?,?,?,?)", rows)

    def close(self) -> None:
        self.db.close()
