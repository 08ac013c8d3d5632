"""`python -m bench.profile`: profile the gateway while the load generator streams through it.

    .venv/bin/python -m bench.profile                          # py-spy, embedded daphne, 100 streams, 15 s
    .venv/bin/python -m bench.profile --server uvicorn --concurrency 500 --seconds 20
    .venv/bin/python -m bench.profile --tool pyinstrument      # main thread only, one worker

Starts the fake and the gateway as `bench.run` does, warms it up, then runs one load
level while the profiler samples the gateway's processes. Writes to bench/results/:

- py-spy (attaches by pid, nothing changes in the server; `--subprocesses` covers
  workers): `profile-<stamp>.folded` (collapsed stacks: speedscope.app and
  flamegraph.pl read them), `profile-<stamp>.svg` (a flame graph) and
  `profile-<stamp>.md` (time by area and by function);
- pyinstrument (runs the server under it; its thread pool is not seen):
  `profile-<stamp>.html` and `profile-<stamp>.txt`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import flame, profiles, scenarios
from bench.servers import MODES, ROOT, SERVERS, Backend, Fake, Gateway


def _tool_path(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed: `{sys.executable} -m pip install {name}` (a bench-only tool)")
    return found


def _load(gw: Gateway, fake: Fake, args: argparse.Namespace) -> dict:
    target = scenarios.gateway(gw.port, args.pace_count, args.pace_ms, stream=not args.nonstream)
    return scenarios.load(target, args.concurrency, duration=args.seconds, max_requests=10**6,
                          deadline=args.seconds + 60, server=gw.pids(), upstream=[fake.pid])


def _warm(gw: Gateway) -> None:
    for stream in (True, False):
        target = scenarios.gateway(gw.port, 3, 5, stream=stream)
        scenarios.load(target, 2, duration=0.5, max_requests=4, deadline=20, server=gw.pids())


def with_py_spy(args: argparse.Namespace, fake: Fake, backend: Backend, stem: Path) -> list[Path]:
    py_spy = _tool_path("py-spy")
    folded = stem.with_suffix(".folded")
    with Gateway(args.server, backend, fake.url) as gw:
        _warm(gw)
        command = [py_spy, "record", "--pid", str(gw.pid), "--subprocesses", "--nonblocking", "--nolineno",
                   "--rate", str(args.rate), "--duration", str(int(args.seconds) + 1), "--format", "raw",
                   "--output", str(folded)]
        if args.native:
            command.append("--native")
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # py-spy attaches before the load starts
        result = _load(gw, fake, args)
        _, err = spy.communicate(timeout=args.seconds + 30)
        if spy.returncode != 0 or not folded.exists():
            raise SystemExit(f"py-spy failed ({spy.returncode}): {err.strip()[-800:]}\n"
                             "It needs ptrace rights on the gateway (root, or CAP_SYS_PTRACE in a container).")
    stacks = flame.parse(folded.read_text())
    kind = "non-stream requests" if args.nonstream else "streams"
    title = (f"grok2api {backend.mode}/{args.server}, {args.concurrency} {kind}, {args.seconds:g} s: "
             f"{result['requests']} requests, {result['errors']} errors, "
             f"ttft p50 {result['ttft_ms']['p50']} ms, {result['chunks_per_s']} chunks/s")
    md, svg = stem.with_suffix(".md"), stem.with_suffix(".svg")
    md.write_text(flame.summary(stacks, title))
    svg.write_text(flame.svg(stacks, title))
    return [folded, svg, md]


def with_pyinstrument(args: argparse.Namespace, fake: Fake, backend: Backend, stem: Path) -> list[Path]:
    if backend.mode != "embedded" or args.server == "granian":
        raise SystemExit("pyinstrument profiles one Python process: use --mode embedded with daphne or uvicorn "
                         "(granian serves from worker processes; use py-spy there)")
    _tool_path("pyinstrument")
    session = stem.with_suffix(".pyisession")
    # `python manage.py serve …` / `python -m uvicorn …` run as `python -m pyinstrument … manage.py serve …`.
    wrap = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session), "-i", "0.001"]
    with Gateway(args.server, backend, fake.url, wrap=wrap) as gw:
        _warm(gw)
        _load(gw, fake, args)
    deadline = time.monotonic() + 20
    while not session.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not session.exists():
        raise SystemExit("pyinstrument wrote no session (did the server stop cleanly on SIGTERM?)")
    outputs = []
    for renderer, suffix in (("html", ".html"), ("text", ".txt")):
        out = stem.with_suffix(suffix)
        subprocess.run([sys.executable, "-m", "pyinstrument", f"--load={session}", "-r", renderer, "-o", str(out)],
                       check=True, cwd=ROOT)
        outputs.append(out)
    session.unlink()  # tens of MB; the HTML holds the same tree
    return outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--tool", choices=("py-spy", "pyinstrument"), default="py-spy")
    parser.add_argument("--server", choices=SERVERS, default="uvicorn")
    parser.add_argument("--mode", choices=MODES, default="embedded")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--nonstream", action="store_true", help="profile non-stream requests instead")
    parser.add_argument("--pace", default="20:20", help="COUNT:MS of each answer (as bench.run)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy: include C extension frames")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    count, _, ms = args.pace.partition(":")
    args.pace_count, args.pace_ms = int(count), float(ms or 20)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"profile-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{args.mode}-{args.server}"
    tokens = [f"bench-{i:03d}" for i in range(1, profiles.get("quick").tokens + 1)]
    logs = Path(tempfile.mkdtemp(prefix="grok2api-profile-"))
    try:
        with Fake(logs) as fake, Backend(args.mode) as backend:
            fake.lift_quota(tokens)
            backend.setup(fake.url, tokens)
            run = with_py_spy if args.tool == "py-spy" else with_pyinstrument
            outputs = run(args, fake, backend, stem)
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    for path in outputs:
        print(path)


if __name__ == "__main__":
    main()
