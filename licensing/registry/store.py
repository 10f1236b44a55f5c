"""SQLite records of servers, issued tokens and the audit trail (who did what, when)."""

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    id INTEGER PRIMARY KEY, customer TEXT NOT NULL, site TEXT NOT NULL,
    product_uuid TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    jti TEXT PRIMARY KEY, server_id INTEGER NOT NULL REFERENCES servers(id), subject TEXT NOT NULL,
    features TEXT NOT NULL, issued_at TEXT NOT NULL, expires_at TEXT NOT NULL, issued_by TEXT NOT NULL,
    token TEXT NOT NULL, revoked_at TEXT, revoked_by TEXT);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
"""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


class Store:
    def __init__(self, path: str | Path):
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _write(self, actor: str, action: str, detail: dict, sql: str, params: tuple) -> sqlite3.Cursor:
        """One transaction: the change and its audit row land together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(sql, params)
                self._conn.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                                   (now_iso(), actor, action, json.dumps(detail, ensure_ascii=False)))
                self._conn.execute("COMMIT")
                return cursor
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self._conn.execute(sql, params).fetchall()]

    def audit(self, actor: str, action: str, detail: dict) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                               (now_iso(), actor, action, json.dumps(detail, ensure_ascii=False)))

    def add_server(self, actor: str, customer: str, site: str, product_uuid: str) -> int:
        cursor = self._write(actor, "server.register", {"customer": customer, "site": site, "product_uuid": product_uuid},
                             "INSERT INTO servers (customer, site, product_uuid, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                             (customer, site, product_uuid, now_iso(), actor))
        return int(cursor.lastrowid)

    def server(self, server_id: int) -> dict | None:
        rows = self._read("SELECT * FROM servers WHERE id = ?", (server_id,))
        return rows[0] if rows else None

    def servers(self) -> list[dict]:
        return self._read("SELECT * FROM servers ORDER BY customer, site")

    def add_token(self, actor: str, server_id: int, claims: dict, token: str) -> None:
        expires = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).isoformat()
        self._write(actor, "token.issue",
                    {"jti": claims["jti"], "server_id": server_id, "subject": claims["sub"],
                     "features": claims["features"], "expires_at": expires},
                    "INSERT INTO tokens (jti, server_id, subject, features, issued_at, expires_at, issued_by, token) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (claims["jti"], server_id, claims["sub"], ",".join(claims["features"]), now_iso(), expires, actor, token))

    def tokens(self, query: str = "") -> list[dict]:
        like = f"%{query}%"
        return self._read(
            "SELECT t.jti, t.subject, t.features, t.issued_at, t.expires_at, t.issued_by, t.revoked_at, t.revoked_by, "
            "s.customer, s.site, s.product_uuid FROM tokens t JOIN servers s ON s.id = t.server_id "
            "WHERE ? = '' OR t.subject LIKE ? OR s.customer LIKE ? OR s.site LIKE ? OR s.product_uuid LIKE ? OR t.jti LIKE ? "
            "ORDER BY t.issued_at DESC", (query, like, like, like, like, like))

    def revoke(self, actor: str, jti: str) -> bool:
        cursor = self._write(actor, "token.revoke", {"jti": jti},
                             "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE jti = ? AND revoked_at IS NULL",
                             (now_iso(), actor, jti))
        return cursor.rowcount == 1

    def revoked_jtis(self) -> list[str]:
        return [row["jti"] for row in self._read("SELECT jti FROM tokens WHERE revoked_at IS NOT NULL ORDER BY jti")]

    def audit_trail(self, limit: int = 500) -> list[dict]:
        return self._read("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
