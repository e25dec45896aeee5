"""``python -m benchmarks.grpc_load TARGET REQUEST_FILE``: a closed-loop gRPC load client.

``wrk`` only speaks HTTP/1.1 and ``ghz`` is not on these machines, so gRPC is loaded by
this small asyncio client. It opens one channel (one HTTP/2 connection, as wrk opens one
connection per simulated client) per concurrent caller, each sending the serialized
``ModelInferRequest`` in the file back to back for the duration, with no protobuf work on
the client (bytes in, bytes out). It runs pinned to one core and reports the CPU time it
used, so a run can show the client was not the bottleneck (``client_cpu_share`` well
under 1.0 of its core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def caller(target: str, request: bytes, stop_at: float, latencies: list, errors: list):
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD)  # no serializers: raw bytes both ways
        await channel.channel_ready()
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call(request, timeout=10)
            except grpc.aio.AioRpcError as e:
                errors.append(e.code().name)
                continue
            latencies.append(time.perf_counter() - started)


async def run(target: str, request: bytes, concurrency: int, duration_s: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    cpu_before = _cpu_s()
    started = time.perf_counter()
    stop_at = started + duration_s
    await asyncio.gather(
        *(caller(target, request, stop_at, latencies, errors) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
        "client_cpu_share": round((_cpu_s() - cpu_before) / elapsed, 2),
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port")
    parser.add_argument("request_file", help="a serialized inference.ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1] if args.cpu is None else args.cpu})
    with open(args.request_file, "rb") as f:
        request = f.read()
    result = asyncio.run(run(args.target, request, args.concurrency, args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
