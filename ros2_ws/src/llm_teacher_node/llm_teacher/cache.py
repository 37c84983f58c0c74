"""Persistent answer cache: (backend, model, planner mode, prompt) -> option distribution.

SQLite in WAL mode: every write is one transaction, so concurrent writers (several teacher
nodes, a training run and an evaluation) and crashes never leave it half-written.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path


class AnswerCache:

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection shared by the node's threads
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._db.execute('PRAGMA journal_mode=WAL')
            self._db.execute('CREATE TABLE IF NOT EXISTS answers (backend TEXT, mode TEXT, prompt TEXT, '
                             'distribution TEXT, PRIMARY KEY (backend, mode, prompt))')
            self._db.commit()
        except sqlite3.DatabaseError as err:
            raise ValueError(f'answer cache {self.path} is not a usable SQLite database ({err}); '
                             f'move it aside or choose another cache path') from err

    def get(self, backend: str, mode: str, prompt: str) -> dict[str, float] | None:
        with self._lock:
            row = self._db.execute('SELECT distribution FROM answers WHERE backend=? AND mode=? AND prompt=?',
                                   (backend, mode, prompt)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, backend: str, mode: str, prompt: str, distribution: dict[str, float]) -> None:
        with self._lock, self._db:
            self._db.execute('INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)',
                             (backend, mode, prompt, json.dumps(distribution)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute('SELECT COUNT(*) FROM answers').fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
