"""Read-only access to an OpenStack MySQL/MariaDB server, through PyMySQL.

The map only ever reads OpenStack's databases, and a bug in stackmap must not be able to change
them: every session is opened ``READ ONLY`` (the server refuses writes), and ``query`` accepts
nothing but SELECT statements (the layer refuses them first, with a clearer message). Connection
errors are retried with tenacity (a database restarting under us); anything else (access denied,
an unknown table, a syntax error) fails at once, because repeating it cannot help. Errors name
the server and the user, never the password.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.constants import CR, ER
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from stackmap.errors import SecretsUnavailable, StackmapError
from stackmap.logging import get_logger
from stackmap.model import MysqlSection
from stackmap.secrets import SecretBox

log = get_logger("stackmap.discovery.db")

Row = dict[str, Any]

# client/server error codes that mean "the connection, not the statement, failed": worth retrying
CONNECTION_ERRORS = frozenset({
    CR.CR_CONNECTION_ERROR, CR.CR_CONN_HOST_ERROR, CR.CR_SERVER_GONE_ERROR, CR.CR_SERVER_LOST,
    ER.CON_COUNT_ERROR, ER.SERVER_SHUTDOWN,
})
_SELECT = re.compile(r"^\s*(?:\(\s*)*SELECT\b", re.IGNORECASE)
# a SELECT can still write files or user variables, or smuggle a second statement: refused too
_NOT_READ_ONLY = re.compile(r"\bINTO\s+(?:OUTFILE|DUMPFILE|@)|;\s*\S", re.IGNORECASE)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


class DbError(StackmapError):
    """A database could not be read; the message is for the operator and holds no secret."""


class DbUnavailable(DbError):
    """The server cannot be reached or refuses us (connection, auth): no query can work."""


class ReadOnlyViolation(DbError):
    """Something asked the read-only layer to run a statement that is not a SELECT."""


class MissingTable(DbError):
    """A table this OpenStack release does not have."""


def quote_identifier(name: str) -> str:
    """A database or table name for SQL text (names cannot be query parameters)."""
    if not _IDENTIFIER.match(name):
        raise DbError(f"invalid database or table name {name!r} in the mysql section")
    return f"`{name}`"


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in CONNECTION_ERRORS


class MysqlReader:
    """One lazily opened, read-only connection to the server of an environment's mysql section."""

    def __init__(self, section: MysqlSection, box: SecretBox, *, connect_timeout_s: float | None = None,
                 read_timeout_s: float | None = None, attempts: int | None = None,
                 retry_wait_max_s: float = 4.0) -> None:
        """Timeouts and attempts come from the environment's mysql section unless given here."""
        self.host = section.host
        self.port = int(section.port)
        self.user = section.user
        self._section = section
        self._box = box
        self._connect_timeout = connect_timeout_s or section.connect_timeout_s
        self._read_timeout = read_timeout_s or section.read_timeout_s
        self._attempts = max(1, attempts or section.attempts)
        self._wait_max = retry_wait_max_s
        self._conn: pymysql.connections.Connection[Any] | None = None
        self.unavailable: str | None = None  # set once the server could not be reached: later queries fail fast

    @property
    def where(self) -> str:
        return f"MySQL {self.host}:{self.port} (user {self.user})"

    # -- connection ---------------------------------------------------------------------------------
    def _password(self) -> str:
        return self._box.reveal(self._section.pwd) or ""

    def _connect(self) -> pymysql.connections.Connection[Any]:
        if self._conn is None:
            self._conn = pymysql.connect(
                host=self.host, port=self.port, user=self.user, password=self._password(),
                connect_timeout=self._connect_timeout, read_timeout=self._read_timeout,
                write_timeout=self._read_timeout, charset="utf8mb4", autocommit=True,
                cursorclass=pymysql.cursors.DictCursor,
                init_command="SET SESSION TRANSACTION READ ONLY",
            )
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(pymysql.err.Error):  # already broken: closing is best effort
                conn.close()

    def close(self) -> None:
        self._drop()

    # -- queries ------------------------------------------------------------------------------------
    def query(self, sql: str, args: tuple[Any, ...] | None = None) -> list[Row]:
        """Rows of one SELECT. Raises ``DbError`` (or a subclass) with an operator-readable message."""
        if not _SELECT.match(sql) or _NOT_READ_ONLY.search(sql):
            raise ReadOnlyViolation(f"{self.where}: refused a statement that is not a plain SELECT (read-only access)")
        if self.unavailable is not None:
            raise DbUnavailable(self.unavailable)

        def attempt() -> list[Row]:
            try:
                with self._connect().cursor() as cur:
                    cur.execute(sql, args)
                    return list(cur.fetchall())
            except pymysql.err.Error:
                if self._conn is not None and not self._conn.open:
                    self._drop()
                raise

        retrying = Retrying(retry=retry_if_exception(_is_connection_error), stop=stop_after_attempt(self._attempts),
                            wait=wait_exponential(multiplier=0.5, max=self._wait_max), reraise=True,
                            before_sleep=self._log_retry)
        try:
            return retrying(attempt)
        except pymysql.err.Error as exc:
            raise self._error(exc) from None
        except SecretsUnavailable as exc:
            self.unavailable = f"{self.where}: cannot connect: {exc}"
            raise DbUnavailable(self.unavailable) from None

    def _log_retry(self, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._drop()
        log.warning("database connection failed, retrying", server=self.where, attempt=state.attempt_number,
                    error=self._reason(exc))

    def _reason(self, exc: BaseException | None) -> str:
        if exc is None:
            return "unknown error"
        args: tuple[Any, ...] = exc.args
        text = str(args[1]) if len(args) > 1 else (str(exc) or type(exc).__name__)
        try:
            plain = self._password()
        except SecretsUnavailable:
            plain = ""
        if plain and plain in text:  # no driver message should carry it, but never risk it
            text = text.replace(plain, "***")
        return text

    def _error(self, exc: pymysql.err.Error) -> DbError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        reason = self._reason(exc)
        if code in CONNECTION_ERRORS or code == ER.ACCESS_DENIED_ERROR:
            message = f"{self.where}: cannot connect: {reason}"
            if code == ER.ACCESS_DENIED_ERROR:
                message = f"{self.where}: access denied (check the mysql section's user and password)"
            self.unavailable = message
            return DbUnavailable(message)
        if code in (ER.DBACCESS_DENIED_ERROR, ER.TABLEACCESS_DENIED_ERROR):
            return DbError(f"{self.where}: not allowed to read: {reason} (grant SELECT on it)")
        if code == ER.NO_SUCH_TABLE:
            return MissingTable(f"{self.where}: {reason}")
        return DbError(f"{self.where}: query failed: {reason}")
