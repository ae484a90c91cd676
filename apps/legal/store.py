"""SQLite knowledge-base store: judgment metadata, passages (chunks), access labels, ingest checkpoints.

SQLite is the source of truth. Passage ids are dense (0, 1, 2, ...) and assigned inside the same
transaction that stores them, so every derived index (FAISS, BM25 segments) can say how far it got with
one number and catch up from there after a crash. WAL mode: a committed batch survives a killed process.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.legal.data import Judgment

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY, court TEXT, date TEXT, case_type TEXT, title TEXT, language TEXT,
    access TEXT, statutes TEXT, first_chunk INTEGER, n_chunks INTEGER);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, ord INTEGER, access_code INTEGER, text TEXT);
CREATE TABLE IF NOT EXISTS labels (code INTEGER PRIMARY KEY, label TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS sources (path TEXT PRIMARY KEY, line INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class Passage:
    chunk_id: int
    doc_id: str
    text: str
    title: str
    court: str
    date: str
    access: str
    statutes: tuple[str, ...]


class Store:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:  # a reader beside a live ingest (e.g. the BM25 segment builder): never takes a write lock
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                        isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA)
        self._labels = dict(self.conn.execute("SELECT label, code FROM labels"))

    def close(self) -> None:
        self.conn.close()

    # --- counters and checkpoints -------------------------------------------------------------
    def n_chunks(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(chunk_id) + 1, 0) FROM chunks").fetchone()[0]

    def n_docs(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def source_line(self, path: str) -> int:
        row = self.conn.execute("SELECT line FROM sources WHERE path = ?", (path,)).fetchone()
        return row[0] if row else 0

    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def label_code(self, label: str) -> int:
        code = self._labels.get(label)
        if code is None:
            code = len(self._labels)
            self.conn.execute("INSERT INTO labels VALUES (?, ?)", (code, label))
            self._labels[label] = code
        return code

    # --- writes ---------------------------------------------------------------------------------
    def existing_ids(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
            part = ids[i:i + 900]
            q = f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(part))})"
            found.update(r[0] for r in self.conn.execute(q, part))
        return found

    def add_batch(self, docs: list[tuple[Judgment, list[str]]], source: str, line: int) -> int:
        """Store judgments with their passages and move the source checkpoint to ``line``, all in ONE
        transaction; returns the first passage id assigned."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            first = next_id = self.n_chunks()
            doc_rows, chunk_rows = [], []
            for doc, passages in docs:
                code = self.label_code(doc.access)
                doc_rows.append((doc.id, doc.court, doc.date, doc.case_type, doc.title, doc.language,
                                 doc.access, json.dumps(list(doc.statutes), ensure_ascii=False),
                                 next_id, len(passages)))
                for ordinal, text in enumerate(passages):
                    chunk_rows.append((next_id, doc.id, ordinal, code, text))
                    next_id += 1
            cur.executemany("INSERT INTO docs VALUES (?,?,?,?,?,?,?,?,?,?)", doc_rows)
            cur.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", chunk_rows)
            cur.execute("INSERT OR REPLACE INTO sources VALUES (?, ?)", (source, line))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            self._labels = dict(self.conn.execute("SELECT label, code FROM labels"))
            raise
        return first

    # --- reads ----------------------------------------------------------------------------------
    def iter_chunk_texts(self, start: int, end: int | None = None, batch: int = 20_000) -> Iterator[tuple[int, str]]:
        end = self.n_chunks() if end is None else end
        for lo in range(start, end, batch):
            yield from self.conn.execute(
                "SELECT chunk_id, text FROM chunks WHERE chunk_id >= ? AND chunk_id < ? ORDER BY chunk_id",
                (lo, min(end, lo + batch)))

    def access_codes(self) -> np.ndarray:
        """access code per passage id (index = passage id)."""
        n = self.n_chunks()
        codes = np.zeros(n, dtype=np.int16)
        for lo in range(0, n, 500_000):
            rows = self.conn.execute("SELECT chunk_id, access_code FROM chunks WHERE chunk_id >= ? AND chunk_id < ?",
                                     (lo, lo + 500_000)).fetchall()
            if rows:
                arr = np.asarray(rows, dtype=np.int64)
                codes[arr[:, 0]] = arr[:, 1]
        return codes

    def allowed_codes(self, tenant: str | None) -> list[int]:
        """Labels a tenant may read: ``public`` plus its own label."""
        allowed = {"public"} | ({tenant} if tenant else set())
        return [code for label, code in self._labels.items() if label in allowed] if self._labels else []

    def passages(self, chunk_ids: Iterable[int]) -> dict[int, Passage]:
        ids = [int(i) for i in chunk_ids]
        if not ids:
            return {}
        q = ("SELECT c.chunk_id, c.doc_id, c.text, d.title, d.court, d.date, d.access, d.statutes "
             f"FROM chunks c JOIN docs d ON d.id = c.doc_id WHERE c.chunk_id IN ({','.join('?' * len(ids))})")
        return {r[0]: Passage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(json.loads(r[7])))
                for r in self.conn.execute(q, ids)}

    def doc_ids_counts(self) -> tuple[int, int]:
        """(documents, distinct document ids among passages) - equal when nothing is duplicated."""
        n_docs = self.n_docs()
        distinct = self.conn.execute("SELECT COUNT(DISTINCT doc_id) FROM chunks").fetchone()[0]
        return n_docs, distinct
