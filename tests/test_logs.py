"""Log lines never block the event loop: they are formatted in place and written by a thread."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from grok2api.logs import QueuedStderrHandler
from grok2api.request_id import request_id


def test_the_configured_console_handler_writes_from_a_thread_of_its_own():
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, QueuedStderrHandler)]
    assert handler.writer.is_alive()
    assert handler.writer is not threading.current_thread()


def test_a_line_keeps_the_request_id_of_where_it_was_logged_and_is_written_before_exit():
    code = (
        "import django, logging, os;"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'grok2api.settings'); django.setup();"
        "from grok2api.request_id import request_id; request_id.set('rid-42');"
        "logging.getLogger('gateway').warning('hello %s', 'there');"
        "[logging.getLogger('gateway').warning('burst %d', i) for i in range(500)]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "hello there" in line]
    assert "WARNING gateway [rid-42] hello there" in line
    # Every line of a burst is written, in order, whole.
    burst = [line.rsplit(" ", 1)[1] for line in done.stderr.splitlines() if " burst " in line]
    assert burst == [str(i) for i in range(500)]


def test_the_record_is_formatted_in_the_calling_thread():
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, QueuedStderrHandler))
    marker = request_id.set("rid-here")
    try:
        record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "n=%d", (7,), None)
        for f in handler.filters:
            f.filter(record)
        prepared = handler.prepare(record)
    finally:
        request_id.reset(marker)
    assert prepared.args is None
    assert "[rid-here] n=7" in prepared.msg
