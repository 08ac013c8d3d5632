"""Whether a PostgreSQL session's server has hung up, judged locally (no round trip).

Used by the Django backend (`grok2api.db.postgresql`) before each use of a connection,
and by the advisory job lock (`pools.locks.PgAdvisoryLock`) for its own session.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

POLL_ROUNDS = 4  # reads of pending input before calling the connection alive: a notice, the FATAL, end of file


def hung_up(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server closed this idle psycopg connection (sync or async), judged from what waits on its socket.

    A server ending a session sends a FATAL error, then closes the socket; the check may
    come between the two, so either one is enough. Only for a connection no statement is
    running on: what it reads are the server's unsolicited messages. False for drivers
    other than psycopg 3.
    """
    pgconn = getattr(connection, "pgconn", None)
    if pgconn is None:
        return False
    # The driver is loaded by whoever holds a psycopg connection; the SQLite default never loads it (~9 MB).
    from psycopg import OperationalError, pq

    farewells: list[object] = []

    def farewell(diagnostic: object) -> None:
        if getattr(diagnostic, "severity_nonlocalized", None) in ("FATAL", "PANIC"):
            farewells.append(diagnostic)

    try:
        if not _readable(pgconn.socket):
            return False
        connection.add_notice_handler(farewell)
        try:
            for _ in range(POLL_ROUNDS):
                pgconn.consume_input()  # a notice or parameter status is harmless; a FATAL or the end of file is not
                pgconn.is_busy()  # parses what was read: an error between statements goes to the notice handlers
                if farewells or pgconn.status == pq.ConnStatus.BAD:
                    return True
                if not _readable(pgconn.socket):
                    return False
        finally:
            connection.remove_notice_handler(farewell)
    except OperationalError:
        return True
    return False


if hasattr(select, "poll"):

    def _readable(fd: int) -> bool:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

else:  # pragma: no cover - Windows

    def _readable(fd: int) -> bool:
        return bool(select.select([fd], [], [], 0)[0])
