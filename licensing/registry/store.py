"""SQLite records of servers, issued tokens (their sha256, never the token), server-side sign-in
sessions and the audit trail (who did what, when). The database and its folder are owner-only."""

import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
import stat
import threading
import time
from pathlib import Path

MAX_TEXT = 200  # longest stored free text (customer, site, subject, audit values)
MAX_ACTOR = 64  # longest user name stored, including the ones typed at a failed sign-in


class StoreError(Exception):
    """The database cannot be used safely (one sentence)."""


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded_detail(detail: dict) -> dict:
    return {
        k: (
            [bounded(v) for v in value[:32]]
            if isinstance(value, list)
            else bounded(value)
            if isinstance(value, str)
            else value
        )
        for k, value in detail.items()
    }


def open_private_database(path: Path) -> None:
    """Create the folder (0700) and file (0600) owner-only; refuse a database others could read."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.exists() and candidate.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StoreError(
                f"The registry database {candidate} is readable by other users; run 'chmod 600 {candidate}' and start again."
            )


SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    id INTEGER PRIMARY KEY, customer TEXT NOT NULL, site TEXT NOT NULL,
    product_uuid TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    jti TEXT PRIMARY KEY, server_id INTEGER NOT NULL REFERENCES servers(id), subject TEXT NOT NULL,
    features TEXT NOT NULL, issued_at TEXT NOT NULL, expires_at TEXT NOT NULL, issued_by TEXT NOT NULL,
    token_sha256 TEXT NOT NULL, revoked_at TEXT, revoked_by TEXT);
CREATE TABLE IF NOT EXISTS token_servers (
    jti TEXT NOT NULL REFERENCES tokens(jti), server_id INTEGER NOT NULL REFERENCES servers(id),
    PRIMARY KEY (jti, server_id));
CREATE TABLE IF NOT EXISTS sessions (
    sid_sha256 TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
"""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path):
        open_private_database(Path(path))
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._migrate_full_tokens()
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _migrate_full_tokens(self) -> None:
        """Databases from before this version kept every token in full: keep only its sha256."""
        columns = [row[1] for row in self._conn.execute("PRAGMA table_info(tokens)")]
        if "token" in columns:
            self._conn.execute("PRAGMA journal_mode = DELETE")  # the old bytes must not linger in a WAL file
            self._conn.execute("PRAGMA secure_delete = ON")
            self._conn.execute("ALTER TABLE tokens ADD COLUMN token_sha256 TEXT NOT NULL DEFAULT ''")
            for jti, token in self._conn.execute("SELECT jti, token FROM tokens").fetchall():
                self._conn.execute("UPDATE tokens SET token_sha256 = ? WHERE jti = ?", (_sha256(token), jti))
            self._conn.execute("ALTER TABLE tokens DROP COLUMN token")
            self._conn.execute("VACUUM")  # the dropped column's bytes leave the file

    def _write(
        self, actor: str, action: str, detail: dict, sql: str, params: tuple, more: tuple[tuple[str, tuple], ...] = ()
    ) -> sqlite3.Cursor:
        """One transaction: the change (SQL, then MORE statements) and its audit row land together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(sql, params)
                for statement, values in more:
                    self._conn.execute(statement, values)
                self._insert_audit(actor, action, detail)
                self._conn.execute("COMMIT")
                return cursor
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self._conn.execute(sql, params).fetchall()]

    def _insert_audit(self, actor: str, action: str, detail: dict) -> None:
        self._conn.execute(
            "INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
            (now_iso(), bounded(actor, MAX_ACTOR), action, json.dumps(_bounded_detail(detail), ensure_ascii=False)),
        )

    def audit(self, actor: str, action: str, detail: dict) -> None:
        with self._lock:
            self._insert_audit(actor, action, detail)

    # --- sessions: the cookie carries a random id; only its sha256 is stored ------------------
    def create_session(self, user: str) -> str:
        sid, now = secrets.token_urlsafe(32), time.time()
        with self._lock:
            self._conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (_sha256(sid), user, now, now))
        return sid

    def session_user(self, sid: str, idle_s: float, absolute_s: float) -> str | None:
        """The signed-in user, or None when the session ended, idled out or reached its absolute lifetime."""
        now = time.time()
        with self._lock:
            self._conn.execute(
                "DELETE FROM sessions WHERE last_seen < ? OR created < ?", (now - idle_s, now - absolute_s)
            )
            row = self._conn.execute("SELECT user FROM sessions WHERE sid_sha256 = ?", (_sha256(sid),)).fetchone()
            if row is None:
                return None
            self._conn.execute("UPDATE sessions SET last_seen = ? WHERE sid_sha256 = ?", (now, _sha256(sid)))
            return row["user"]

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE sid_sha256 = ?", (_sha256(sid),))

    def add_server(self, actor: str, customer: str, site: str, product_uuid: str) -> int:
        cursor = self._write(
            actor,
            "server.register",
            {"customer": customer, "site": site, "product_uuid": product_uuid},
            "INSERT INTO servers (customer, site, product_uuid, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
            (customer, site, product_uuid, now_iso(), actor),
        )
        assert cursor.lastrowid is not None  # set by every INSERT
        return cursor.lastrowid

    def server(self, server_id: int) -> dict | None:
        rows = self._read("SELECT * FROM servers WHERE id = ?", (server_id,))
        return rows[0] if rows else None

    def servers(self) -> list[dict]:
        return self._read("SELECT * FROM servers ORDER BY customer, site")

    def add_token(self, actor: str, server_ids: list[int], claims: dict, token: str) -> None:
        """Records the token's sha256 (to recognise it later), never the token itself, and every server
        it covers (several for a cluster licence; the first is the token's server in older rows)."""
        expires = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).isoformat()
        self._write(
            actor,
            "token.issue",
            {
                "jti": claims["jti"],
                "server_ids": server_ids,
                "subject": claims["sub"],
                "features": claims["features"],
                "expires_at": expires,
            },
            "INSERT INTO tokens (jti, server_id, subject, features, issued_at, expires_at, issued_by, token_sha256) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                claims["jti"],
                server_ids[0],
                claims["sub"],
                ",".join(claims["features"]),
                now_iso(),
                expires,
                actor,
                _sha256(token),
            ),
            tuple(
                ("INSERT INTO token_servers (jti, server_id) VALUES (?, ?)", (claims["jti"], server_id))
                for server_id in server_ids
            ),
        )

    def tokens(self, query: str = "") -> list[dict]:
        """Each token with its customer, its servers' sites and product_uuids (space-separated: a cluster's several)."""
        like = f"%{query}%"
        return self._read(
            "WITH covered AS (SELECT t.jti, s.customer, s.site, s.product_uuid FROM tokens t "
            "  JOIN servers s ON s.id IN (SELECT ts.server_id FROM token_servers ts WHERE ts.jti = t.jti) "
            "    OR (s.id = t.server_id AND NOT EXISTS (SELECT 1 FROM token_servers ts WHERE ts.jti = t.jti))) "
            "SELECT t.jti, t.subject, t.features, t.issued_at, t.expires_at, t.issued_by, t.revoked_at, t.revoked_by, "
            "c.customer, group_concat(c.site, ' ') AS site, group_concat(c.product_uuid, ' ') AS product_uuid "
            "FROM tokens t JOIN covered c ON c.jti = t.jti GROUP BY t.jti "
            "HAVING ? = '' OR t.subject LIKE ? OR c.customer LIKE ? OR group_concat(c.site, ' ') LIKE ? "
            "  OR group_concat(c.product_uuid, ' ') LIKE ? OR t.jti LIKE ? "
            "ORDER BY t.issued_at DESC",
            (query, like, like, like, like, like),
        )

    def revoke(self, actor: str, jti: str) -> bool:
        cursor = self._write(
            actor,
            "token.revoke",
            {"jti": jti},
            "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE jti = ? AND revoked_at IS NULL",
            (now_iso(), actor, jti),
        )
        return cursor.rowcount == 1

    def revoked_jtis(self) -> list[str]:
        return [row["jti"] for row in self._read("SELECT jti FROM tokens WHERE revoked_at IS NOT NULL ORDER BY jti")]

    def audit_trail(self, limit: int = 500) -> list[dict]:
        return self._read("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
