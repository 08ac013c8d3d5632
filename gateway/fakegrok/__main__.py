"""`python -m gateway.fakegrok --host 127.0.0.1 --port 8801`: run the fake until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from .server import FakeGrok


async def serve(host: str, port: int) -> None:
    fake = FakeGrok(host=host, port=port)
    await fake.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    print(f"fakegrok listening on {fake.base_url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.fakegrok", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8801)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
