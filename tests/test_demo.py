"""`make demo` prints a curl and a Python snippet that work as printed, offline."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo(tmp_path):
    port, fake_port = _free_port(), _free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "PORT": str(port), "API_KEY": "demo-key",
           "GROK_BASE_URL": f"http://127.0.0.1:{fake_port}", "GROK_ASSETS_URL": f"http://127.0.0.1:{fake_port}"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.Popen([sys.executable, "manage.py", "demo"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_it_prints_a_curl_that_streams_an_answer(demo):
    (command,) = [line for line in demo.splitlines() if line.startswith("curl ")]
    out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30).stdout
    assert out.strip().endswith("data: [DONE]")
    assert '"content":"You "' in out


def test_it_prints_a_python_snippet_that_streams_an_answer(demo):
    (snippet,) = re.findall(r"\.venv/bin/python -c '\n(.*?)\n'", demo, re.S)
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "Grok shipped X [[1]](https://example.com/a)." in out.stdout


@pytest.mark.parametrize("variable", ["FAKE_PORT", "PORT"])
def test_a_busy_port_fails_in_one_line_naming_its_variable(tmp_path, variable):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"FAKE_PORT": _free_port(), "PORT": _free_port(), variable: busy.getsockname()[1]}
        fake = f"http://127.0.0.1:{ports['FAKE_PORT']}"
        env = {**os.environ, "DATA_DIR": str(tmp_path), "PORT": str(ports["PORT"]), "API_KEY": "demo-key",
               "GROK_BASE_URL": fake, "GROK_ASSETS_URL": fake}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        result = subprocess.run([sys.executable, "manage.py", "demo"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert f"set {variable} " in line and str(ports[variable]) in line
