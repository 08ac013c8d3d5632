"""Log lines never block the event loop: they are formatted in place and written by a thread."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import httpx
import pytest

from grok2api.logs import QueuedStderrHandler
from grok2api.request_id import request_id
from tests.conftest import API_KEY, raw_chat_stream, read_frames


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


# -- the access line: one per /v1 request, written when the answer has ended ----------------------------------

ACCESS = "grok2api.access"


def _access_lines(caplog, rid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS and getattr(r, "request_id", None) == rid]


def _the_line(caplog, rid: str) -> str:
    # The line of a stream is written in the server's thread when the stream ends: wait for it (bounded).
    deadline = time.monotonic() + 10
    while not _access_lines(caplog, rid) and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = _access_lines(caplog, rid)
    assert record.levelno == logging.INFO
    return record.getMessage()


@pytest.fixture
def access(caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


def test_a_401_leaves_one_access_line_with_a_masked_key(gateway, access):
    wrong = "sk-wrong-key-0123456789"
    reply = httpx.post(gateway + "/v1/chat/completions", timeout=30, json={"model": "grok-chat-fast", "messages": []},
                       headers={"Authorization": f"Bearer {wrong}", "X-Request-Id": "log-401"})
    assert reply.status_code == 401
    line = _the_line(access, "log-401")
    assert line.startswith("POST /v1/chat/completions status=401 duration_ms=")
    assert "key=sk-…6789" in line and wrong not in line
    assert line.endswith("model=- result=error")


def test_a_404_leaves_one_access_line(gateway, access):
    reply = httpx.get(gateway + "/v1/nowhere", timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "log-404"})
    assert reply.status_code == 404
    line = _the_line(access, "log-404")
    assert line.startswith("GET /v1/nowhere status=404 ") and line.endswith(" result=error")
    assert API_KEY not in line


def test_a_stream_leaves_one_access_line_when_it_ends(gateway, pool, access):
    pool.add("good-1")
    body = {"model": "grok-chat-fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "log-stream"}) as reply:
        assert reply.status_code == 200
        assert "[DONE]" in reply.read().decode()
    line = _the_line(access, "log-stream")
    assert line.startswith("POST /v1/chat/completions status=200 ")
    assert line.endswith(" model=grok-chat-fast result=ok")


def test_a_stream_the_client_abandons_is_logged_as_client_disconnected(gateway, pool, fake_grok, access):
    pool.add("good-1")
    with raw_chat_stream(gateway, "[fake:pace=400:25]", request_id="log-gone") as sock:
        read_frames(sock, 5)
    line = _the_line(access, "log-gone")
    assert line.startswith("POST /v1/chat/completions status=200 ")
    assert line.endswith(" model=grok-chat-fast result=client_disconnected")


def test_a_stream_that_fails_after_it_started_is_logged_as_an_error(gateway, pool, access):
    pool.add("good-1")
    body = {"model": "grok-chat-fast", "stream": True,
            "messages": [{"role": "user", "content": "[fake:error-after-text]"}]}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "log-inband"}) as reply:
        assert reply.status_code == 200
        assert '"error"' in reply.read().decode()
    line = _the_line(access, "log-inband")
    assert line.startswith("POST /v1/chat/completions status=200 ") and line.endswith(" result=error")
