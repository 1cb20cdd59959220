#!/usr/bin/env python3
"""End-to-end throughput benchmark of the whole cloudimg stack on loopback.

Starts moto_server (the S3 endpoint), the release `cloudimg-producer` and one `cloudimg-worker`
process against the local RabbitMQ, sends the bench photos ROUNDS times with the real
`cloudimg send --wait --json`, and reports:

* images/s: every image pushed at once (`cloudimg send -c UPLOADS`, no status polling), from the
  first upload to the last "job done" in the worker's JSON log;
* latency p50/p95 in that saturated run (upload start to result written: the client's upload time
  plus the worker's `since_accepted_ms`), which is mostly time spent queued;
* latency p50/p95 with no queue: each photo sent alone with `cloudimg send --wait` (polls `GetJob`
  at 50 ms, then every 1.5x longer, so it reads up to one poll interval high);
* CPU milliseconds per image for each component during the throughput run, from /proc (utime +
  stime deltas): producer, RabbitMQ (the beam.smp process), worker (split into the engine's pool
  threads, named `cloudimg-engine-N`, and everything else), the S3 endpoint (moto) and the client
  (its own rusage from wait4).

Usage: python3 benches/e2e/bench.py [--rounds 4] [--concurrency 2] [--corpus DIR] [--json OUT]
Standard library only. Needs RabbitMQ on 127.0.0.1:5672 and moto_server on PATH.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid, task=None):
    """utime + stime of a process (or one of its threads), in seconds."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid, prefix):
    """CPU seconds of the threads of `pid` whose name starts with `prefix`, and of the others."""
    mine = other = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            t = cpu_seconds(pid, task)
        except OSError:
            continue
        if name.startswith(prefix):
            mine += t
        else:
            other += t
    return mine, other


def rabbit_pid():
    out = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="times each bench photo is sent")
    ap.add_argument("--concurrency", type=int, default=2, help="the worker's CLOUDIMG_CONCURRENCY")
    ap.add_argument("--uploads", type=int, default=8, help="the client's uploads in flight")
    ap.add_argument("--corpus", default=os.environ.get("CLOUDIMG_CORPUS", str(ROOT.parent / "shared/corpus")))
    ap.add_argument("--wait", action="store_true",
                    help="throughput run with `send --wait` (completion and latency from the client's polling)")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries as built")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/cloudimg-target")))
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "cloudimg-producer", "-p", "cloudimg-worker",
             "-p", "cloudimg-client"],
            cwd=ROOT, env=env, check=True)
    bin_dir = target / "release"
    photos = sorted(Path(args.corpus, "bench").glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos in {args.corpus}/bench")
    rabbit = rabbit_pid()
    if rabbit is None or not wait_port(5672, 1):
        sys.exit("RabbitMQ is not running on 127.0.0.1:5672")

    run = uuid.uuid4().hex[:8]
    out_path = f"/tmp/cloudimg-bench-{run}.jsonl"
    queue, bucket = f"cloudimg-bench-{run}", f"cloudimg-bench-{run}"
    moto_port, grpc_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{moto_port}"
    procs = []
    worker_log = f"/tmp/cloudimg-bench-{run}-worker.log"
    try:
        # Its own session, so the whole group (wrappers such as pyenv shims included) is stopped.
        moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(moto_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(moto)
        if not wait_port(moto_port):
            sys.exit("moto_server did not start")
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).read()
        shell_env = dict(
            os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test", BUCKET_NAME=bucket, CLOUDIMG_QUEUE=queue, RUST_LOG="warn",
            CLOUDIMG_LISTEN=f"127.0.0.1:{grpc_port}", CLOUDIMG_CONCURRENCY=str(args.concurrency))
        producer = subprocess.Popen([bin_dir / "cloudimg-producer"], env=shell_env)
        procs.append(producer)
        worker = subprocess.Popen([bin_dir / "cloudimg-worker"],
                                  env=dict(shell_env, RUST_LOG="info", CLOUDIMG_LOG_FORMAT="json"),
                                  stderr=open(worker_log, "w"))
        procs.append(worker)
        if not wait_port(grpc_port):
            sys.exit("the producer did not start")
        send = [str(bin_dir / "cloudimg"), "send", "--json", "--latency"]
        address = f"127.0.0.1:{grpc_port}"

        # Warm up (connections, caches), not measured.
        subprocess.run(send + ["--wait"] + [str(p) for p in photos[:4]] + [address], env=shell_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

        # Phase 1, throughput: every image pushed as fast as the client uploads (-c uploads in
        # flight), completion seen in the worker's JSON log (no status polling to skew the CPU).
        watched = {"producer": producer.pid, "rabbitmq": rabbit, "s3 endpoint (moto)": moto.pid}
        before = {k: cpu_seconds(p) for k, p in watched.items()}
        engine_before, rest_before = thread_cpu(worker.pid, "cloudimg-engine")
        paths = [str(p) for _ in range(args.rounds) for p in photos]
        total_bytes = sum(p.stat().st_size for p in photos) * args.rounds
        start = time.perf_counter()
        with open(out_path, "w") as out_file:
            sender = subprocess.Popen(send + ["-c", str(args.uploads)] + (["--wait"] if args.wait else [])
                                      + paths + [address], env=shell_env,
                                      stdout=out_file, stderr=subprocess.DEVNULL)
            # wait4 gives the client's own CPU time (rusage of exactly that child).
            _, status, client_usage = os.wait4(sender.pid, 0)
        records = [json.loads(line) for line in Path(out_path).read_text().splitlines()]
        os.unlink(out_path)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"cloudimg send failed: {[r for r in records if r['status'] == 'failed'][:3]}")
        wanted = {r["key"]: r for r in records}
        done = {}
        deadline = time.time() + 600
        while len(done) < len(wanted) and time.time() < deadline:
            for line in Path(worker_log).read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "job done" and event.get("key") in wanted:
                    done[event["key"]] = event
            time.sleep(0.05)
        wall = time.perf_counter() - start
        after = {k: cpu_seconds(p) for k, p in watched.items()}
        engine_after, rest_after = thread_cpu(worker.pid, "cloudimg-engine")
        if args.wait:
            latencies = [r["latency_ms"] for r in records if r["status"] == "done"]
        else:
            latencies = [wanted[k]["latency_ms"] + e["since_accepted_ms"] for k, e in done.items()]

        # Phase 2, latency without a queue: one image at a time, `send --wait`, each photo once.
        quiet = []
        for photo in photos:
            out = subprocess.run(send + ["--wait", str(photo), address], env=shell_env, capture_output=True,
                                 text=True, check=True).stdout
            quiet.append(json.loads(out)["latency_ms"])
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        if procs:
            try:
                os.killpg(procs[0].pid, signal.SIGTERM)
            except OSError:
                pass
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if shutil.which("rabbitmqctl"):
            for q in (queue, queue + ".dead"):
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", q], capture_output=True)

    n = len(records)
    client_cpu = client_usage.ru_utime + client_usage.ru_stime
    cpu = {k: (after[k] - before[k]) for k in watched}
    cpu["worker: engine threads"] = engine_after - engine_before
    cpu["worker: everything else"] = rest_after - rest_before
    cpu["client"] = client_cpu
    per_image = {k: v * 1000 / n for k, v in cpu.items()}
    shells = per_image["producer"] + per_image["client"] + per_image["worker: everything else"]
    result = {
        "images": n,
        "done": len(done),
        "bytes_avg": total_bytes / n,
        "wall_s": wall,
        "images_per_s": len(done) / wall,
        "saturated_latency_ms_p50": percentile(latencies, 50),
        "saturated_latency_ms_p95": percentile(latencies, 95),
        "single_latency_ms_p50": percentile(quiet, 50),
        "single_latency_ms_p95": percentile(quiet, 95),
        "cpu_ms_per_image": per_image,
        "cpu_ms_per_image_total": sum(per_image.values()),
        "cpu_ms_per_image_our_shells": shells,
        "worker_concurrency": args.concurrency,
        "client_uploads_in_flight": args.uploads,
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
    }
    print(f"{n} images ({len(done)} done), {total_bytes / n / 1e6:.2f} MB average, "
          f"worker concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    print(f"throughput: {result['images_per_s']:.2f} images/s ({wall:.1f} s)")
    print(f"latency, all {n} queued at once{' (send --wait)' if args.wait else ''} (upload start to result written): "
          f"p50 {result['saturated_latency_ms_p50']:.0f} ms, p95 {result['saturated_latency_ms_p95']:.0f} ms")
    print(f"latency, one image at a time (send --wait, includes status polling): "
          f"p50 {result['single_latency_ms_p50']:.0f} ms, p95 {result['single_latency_ms_p95']:.0f} ms")
    print("CPU per image (throughput phase):")
    for k, v in per_image.items():
        print(f"  {k:26} {v:7.1f} ms")
    print(f"  {'total':26} {result['cpu_ms_per_image_total']:7.1f} ms")
    print(f"  our shells outside the engine (producer + client + worker non-engine): {shells:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    os.unlink(worker_log)
    if n != len(done):
        sys.exit(1)


if __name__ == "__main__":
    main()
