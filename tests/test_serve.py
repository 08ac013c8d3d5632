"""`manage.py serve` (what `make run` runs): one process by default, WEB_CONCURRENCY workers on a shared socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.multiworker import ROOT, Cluster, free_port

pytestmark = pytest.mark.timeout(120)


def test_it_refuses_several_workers_on_sqlite(tmp_path):
    env = {**os.environ, "WEB_CONCURRENCY": "2", "DATA_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "manage.py", "serve", "--port", str(free_port())], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "grok2api.E001" in result.stderr and "DATABASE_URL" in result.stderr
    assert "grok2api.E002" in result.stderr and "REDIS_URL" in result.stderr


def _workers(proc: subprocess.Popen) -> list[int]:
    """PIDs of the server workers the supervisor runs (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_text()
        except OSError:
            continue
        serving = "grok2api.asgi:application" in cmdline or "--fd" in cmdline
        if int(stat[1]) == proc.pid and stat[0] != "Z" and serving:
            pids.append(int(entry))
    return pids


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_it_runs_and_supervises_several_workers_on_one_port(fake_grok, server):
    with Cluster(workers=0, fake_url=fake_grok.base_url) as cluster:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT,
                                env={**cluster.env, "WEB_CONCURRENCY": "2", "ASGI_SERVER": server},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while len(_workers(proc)) < 2 or not _healthy(port):
                assert time.monotonic() < deadline, "workers did not come up"
                time.sleep(0.2)
            first = _workers(proc)
            assert all(server in Path(f"/proc/{pid}/cmdline").read_text() for pid in first)
            # Exactly two serving processes in the whole tree: a worker must not fork workers of its own.
            assert [child for pid in first for child in _children(pid)] == []
            os.kill(first[0], signal.SIGKILL)
            while first[0] in _workers(proc) or len(_workers(proc)) < 2:
                assert time.monotonic() < deadline + 30, "the dead worker was not replaced"
                time.sleep(0.2)
            assert _healthy(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert not any(Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_text()
                       for pid in first)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.append(int(entry))
    return out


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_worker_stopped_with_sigterm_writes_the_usage_it_holds(fake_grok):
    fake_grok.reset()
    # An interval no test outlasts: what reaches the database is what the worker writes on its way out.
    with Cluster(workers=1, fake_url=fake_grok.base_url, env={"USAGE_FLUSH_INTERVAL": "3600"}) as cluster:
        cluster.manage("import_tokens", "-", "--type", "basic", input="mw-exit-1\n")
        cluster.sql("update pools_account set failure_count = 2, last_error = 'earlier'")
        reply = httpx.post(cluster.urls[0] + "/v1/chat/completions", headers=cluster.headers, timeout=30, json={
            "model": "grok-chat-fast", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text
        assert cluster.sql("select use_count, failure_count from pools_account") == [(0, 2)]  # held in memory

        cluster.kill(0, signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down cleanly (systemd counts that as a clean stop).
        assert cluster.procs[0].returncode in (0, -signal.SIGTERM), cluster.log(0)
        assert cluster.sql("select use_count, failure_count, last_error from pools_account") == [(1, 0, "")]


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_one_worker_serves_a_stream_on_either_server(fake_grok, tmp_path, server):
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": "", "ASGI_SERVER": server,
           "GROK_BASE_URL": fake_grok.base_url, "GROK_ASSETS_URL": fake_grok.base_url, "API_KEY": "",
           "PERIODIC_JOBS": "false"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=60)
    subprocess.run([sys.executable, "manage.py", "import_tokens", "-", "--type", "basic"], cwd=ROOT, env=env,
                   input="one-worker-1\n", text=True, check=True, timeout=60)
    proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(port):
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, json={
                "model": "grok-chat-fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as reply:
            text = "".join(reply.iter_text())
        assert reply.status_code == 200
        assert text.rstrip().endswith("data: [DONE]")
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).startswith("You said")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert f"server: {server}" in out


def test_a_busy_port_fails_in_one_line_naming_port_before_saying_listening(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": "", "PERIODIC_JOBS": "false"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=60)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "listening" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "PORT" in line and str(port) in line
