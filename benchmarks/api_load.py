"""Load on the control service: 64 concurrent clients on loopback against the real service (its
own process, uvicorn) and a private redis-server; requests/s and latency percentiles for
``POST /jobs`` and ``GET /jobs/{id}``.

    python benchmarks/api_load.py [--clients 64] [--posts 3000] [--gets 10000] [--workers 1]

Goal on a 2-core machine: POST >= 300/s, GET >= 1000/s, p99 <= 50 ms. The clients run in this
process (one asyncio loop), on the same cores as the service, so they are kept cheap: plain HTTP/1.1
on kept-alive connections (an httpx client spent about as much CPU per request as the service and
halved the rate it could be offered). Each client connects and sends ``--warmup`` requests of the
kind measured before the clock starts (the service opens its Redis connections lazily, on the first
requests), so the figures are the steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import uvloop

KEY = "benchmark-key-0123456789"
SPEC = json.dumps({"task": {"size": "small"}, "losses": ["logistic", "hinge"], "betas": [0.1, 1.0]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connection:
    """One kept-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in header.split(b"\r\n") if line[:15].lower() == b"content-length:")
        return int(header[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def hammer(port: int, clients: int, total: int, warmup: int, request) -> tuple[float, list[float], list]:
    """``total`` requests spread over ``clients`` concurrent connections, each connected and warmed
    up before the clock starts; (seconds, latencies, results)."""
    latencies: list[float] = []
    results: list = []
    counter = iter(range(total))

    async def client() -> None:
        connection = await Connection.open(port)
        for number in range(warmup):
            await request(connection, number)
        await ready.wait()
        for number in counter:
            started = time.perf_counter()
            results.append(await request(connection, number))
            latencies.append(time.perf_counter() - started)
        connection.close()

    ready = asyncio.Event()
    connected = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(1.0 + 0.01 * clients * warmup)  # every client connected and warmed up
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*connected)
    return time.perf_counter() - started, latencies, results


def summary(name: str, seconds: float, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(0.99 * (len(ordered) - 1))] * 1000
    rate = len(ordered) / seconds
    return f"{name:<16} {rate:8.1f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   ({len(ordered)} requests)"


async def run(args, port: int) -> None:
    async def post(connection: Connection, number: int) -> str:
        status, body = await connection.request("POST", "/jobs", SPEC)
        assert status == 201, body
        return json.loads(body)["id"]

    seconds, latencies, ids = await hammer(port, args.clients, args.posts, args.warmup, post)
    print(summary("POST /jobs", seconds, latencies), flush=True)

    async def get(connection: Connection, number: int) -> None:
        status, body = await connection.request("GET", f"/jobs/{ids[number % len(ids)]}")
        assert status == 200, body

    seconds, latencies, _ = await hammer(port, args.clients, args.gets, args.warmup, get)
    print(summary("GET /jobs/{id}", seconds, latencies), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--gets", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per client before each phase")
    parser.add_argument("--workers", type=int, default=1, help="processes of the control service (GPO_WORKERS)")
    parser.add_argument(
        "--rate-limit", type=int, default=0, help="GPO_RATE_LIMIT_PER_MINUTE (0: off; a huge one counts, refuses none)"
    )
    args = parser.parse_args()
    print(f"command: python benchmarks/api_load.py --clients {args.clients} --posts {args.posts} --gets {args.gets} "
          f"--warmup {args.warmup} --workers {args.workers} --rate-limit {args.rate_limit}")  # fmt: skip
    folder = tempfile.mkdtemp(prefix="gpo-load-")
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", folder,
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "GPO_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "GPO_ARTIFACTS": f"{folder}/artifacts",
           "GPO_API_KEYS": f"{KEY}:bench", "GPO_PORT": str(port), "GPO_WORKERS": str(args.workers),
           "GPO_RATE_LIMIT_PER_MINUTE": str(args.rate_limit),
           "GPO_MAX_ACTIVE_RUNS": "1000000"}  # one tenant's thousands of jobs: measured, not refused  # fmt: skip
    control = subprocess.Popen([sys.executable, "-m", "gpo_services.control"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        uvloop.run(run(args, port))
        print(f"cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
    finally:
        control.terminate()
        control.wait()
        redis.terminate()
        redis.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
