"""Django's PostgreSQL backend, with a broken connection replaced before its next use.

Django drops broken connections at the start and end of each request
(`close_old_connections` on `request_started` / `request_finished`). The API handler
(`grok2api.api_handler`) sends neither signal, and periodic jobs, the usage flusher and
roster reloads run outside any request: a connection the server closed (a restart,
`pg_terminate_backend`, `idle_session_timeout`, a failover) would fail every statement
of its thread until the worker restarts.

So the check sits where every use of the connection passes: `ensure_connection`, which
Django calls before each cursor (ORM, async ORM, raw SQL of the lease backend) and at the
start of each atomic block. Outside a transaction, a connection is closed there, and the
statement opens a new one, when

    psycopg knows it is closed        a statement on it failed that way
    its server hung up while idle     the socket is readable while no answer is due, and what
                                      is there is the server's FATAL error or the end of file:
                                      read locally, no round trip, one poll() (~1 µs) per check
    an error occurred on it since     other than DataError / IntegrityError: Django's own
                                      `is_usable` (SELECT 1), once per error, as
                                      `close_if_unusable_or_obsolete` does

A connection that died without a word (a network cut) is found out by the statement
that tries it, which fails; the next statement gets a new connection. A connection
inside a transaction (an atomic block, or autocommit turned off by hand) is never
swapped: the transaction's statements fail, and atomic's exit drops the connection
when its rollback fails. CONN_MAX_AGE is left to whoever closes connections between
units of work (`pools.usage` for the API's thread).
"""

from __future__ import annotations

from django.db.backends.postgresql import base

from pools.pg import hung_up


class DatabaseWrapper(base.DatabaseWrapper):
    def ensure_connection(self) -> None:
        if self.connection is not None and not self.in_atomic_block and self.autocommit and self._unusable():
            self.close()
        super().ensure_connection()

    def _unusable(self) -> bool:
        if self.connection.closed or hung_up(self.connection):
            return True
        if self.errors_occurred:
            if not self.is_usable():
                return True
            self.errors_occurred = False
        return False
