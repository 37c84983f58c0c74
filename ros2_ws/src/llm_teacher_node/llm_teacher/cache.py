"""Persistent answer cache: (backend, model, planner mode, prompt) -> option distribution.

SQLite in WAL mode: every write is one transaction, so concurrent writers (several teacher
nodes, a training run and an evaluation) and crashes never leave it half-written. Once open, an
SQLite error (a full disk, a locked or damaged file) or a row that is not a distribution (written
by another program or version) raises CacheError for that one call: the caller goes on without
the cache, and every other row stays as it was.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path


class CacheError(RuntimeError):
    """One get or put failed; the message names the file and why."""


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
        """The stored distribution, or None if there is none.

        :raises CacheError: an SQLite error, or a stored row that is not a distribution.
        """
        try:
            with self._lock:
                row = self._db.execute('SELECT distribution FROM answers WHERE backend=? AND mode=? AND prompt=?',
                                       (backend, mode, prompt)).fetchone()
        except sqlite3.Error as err:
            raise CacheError(f'answer cache {self.path}: reading failed ({type(err).__name__}: {err})') from err
        if row is None:
            return None
        try:
            distribution = json.loads(row[0])
            if isinstance(distribution, dict) and all(isinstance(k, str) and isinstance(p, (int, float))
                                                      and math.isfinite(p) and 0 <= p <= 1
                                                      for k, p in distribution.items()):
                return distribution
        except (TypeError, ValueError):
            pass  # reported below, as any other row that is not a distribution
        raise CacheError(f'answer cache {self.path}: the row of {backend} ({mode}) is not an option distribution '
                         f'(written by another program?): {str(row[0])[:100]!r}; a new answer will replace it')

    def put(self, backend: str, mode: str, prompt: str, distribution: dict[str, float]) -> None:
        """:raises CacheError: an SQLite error (the row is not stored; the others are kept)."""
        try:
            with self._lock, self._db:
                self._db.execute('INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)',
                                 (backend, mode, prompt, json.dumps(distribution)))
        except sqlite3.Error as err:
            raise CacheError(f'answer cache {self.path}: storing an answer failed ({type(err).__name__}: {err}); '
                             f'it is kept in memory for this run') from err

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute('SELECT COUNT(*) FROM answers').fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
