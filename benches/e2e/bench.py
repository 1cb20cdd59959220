#!/usr/bin/env python3
"""End-to-end throughput benchmark of the whole cloudimg stack on loopback.

Starts moto_server (the S3 endpoint), the release `cloudimg-producer` and N `cloudimg-worker`
processes against the local RabbitMQ, sends the bench photos ROUNDS times with the real
`cloudimg send --json`, and reports, for each worker count asked for (`--workers 1,2,4`):

* images/s: every image pushed at once (`cloudimg send -c UPLOADS`, no status polling), from the
  first upload to the last "job done" in the workers' JSON logs;
* latency p50/p95 in that saturated run (upload start to result written: the client's upload time
  plus the worker's `since_accepted_ms`), which is mostly time spent queued;
* CPU milliseconds per image for each component, from /proc (utime + stime deltas): producer,
  RabbitMQ (the beam.smp process), every worker process (split into the engine's pool threads,
  named `cloudimg-engine-N`, and everything else), the S3 endpoint (moto) and the client (its own
  rusage from wait4); the producer's CPU per MB uploaded; how busy the machine's cores were;
* where the wall time of a job goes, from the shells' own stage histograms (Prometheus, scraped
  before and after): producer receive / staging / publish (to the broker's confirm), worker fetch
  (the staged GET) / engine / store (the result's PUT), and the queue wait.

Then, once: latency with no queue (each photo sent alone with `cloudimg send --wait`, which polls
`GetJob` at 50 ms, then every 1.5x longer, so it reads up to one poll interval high), and with
`--engine-bench`, `engine-bench --threads 1` over the same photos for the worker's CPU per image
against the engine's alone.

`--pad-to BYTES` replaces the photos by one small corpus JPEG padded with comment segments to
BYTES (conversion then costs almost nothing, so what is left is moving the bytes), and
`--stage-over BYTES` sets the producer's CLOUDIMG_STAGE_OVER_BYTES: together they measure what a
staged upload costs against an inline one (docs/benchmarks.md).

Usage: python3 benches/e2e/bench.py [--rounds 4] [--workers 1,2,4] [--concurrency 1] [--json OUT]
Standard library only. Needs RabbitMQ on 127.0.0.1:5672 and moto_server on PATH.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")
# A small, valid baseline JPEG of the corpus (ok in MANIFEST.tsv) to pad for --pad-to.
PAD_SOURCE = "conformance/jpeg/grayscale/gray_531x373.jpg"


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
    """CPU seconds of the threads of `pid` whose name starts with `prefix`, and of the others.

    Threads that ended took their time with them; the difference to the process's total (which
    keeps it) is counted as 'others'."""
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
    return mine, max(other, cpu_seconds(pid) - mine)


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


def scrape(port):
    """Prometheus text of a shell's metrics endpoint as {series: value}."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                pass
    return out


def stage_means(before, after, images):
    """Seconds per image spent in each `cloudimg_stage_seconds{stage=...}` between two scrapes."""
    means = {}
    for series, total in after.items():
        m = re.fullmatch(r'cloudimg_stage_seconds_sum\{stage="([^"]+)"\}', series)
        if m:
            means[m.group(1)] = (total - before.get(series, 0.0)) / images
    return means


def padded_jpeg(source, size):
    """`source` (a JPEG) with comment segments after SOI until it is exactly `size` bytes."""
    data = source.read_bytes()
    need = size - len(data)
    if need < 0:
        sys.exit(f"--pad-to {size} is smaller than {source} ({len(data)} bytes)")
    if 0 < need < 4:
        sys.exit(f"--pad-to {size}: a comment segment takes at least 4 bytes, {need} are missing")
    segments = []
    while need > 0:
        body = min(need - 4, 65533)
        if 0 < need - (body + 4) < 4:  # leave room for one more whole segment
            body -= 4
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + bytes(body))
        need -= body + 4
    out = data[:2] + b"".join(segments) + data[2:]
    return out


class Stack:
    """moto, the producer and the broker for one benchmark run; workers come and go."""

    def __init__(self, args, bin_dir, tmp):
        self.args, self.bin_dir, self.tmp = args, bin_dir, tmp
        run = uuid.uuid4().hex[:8]
        self.queue = self.bucket = f"cloudimg-bench-{run}"
        self.procs, self.workers = [], []
        self.moto_port, self.grpc_port, self.producer_metrics = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.grpc_port}"
        endpoint = f"http://127.0.0.1:{self.moto_port}"
        self.env = dict(
            os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test", BUCKET_NAME=self.bucket, CLOUDIMG_QUEUE=self.queue, RUST_LOG="warn",
            CLOUDIMG_LISTEN=self.address)
        for k in ("AMQP_URL", "RABBIT_HOST", "CLOUDIMG_OUT_DIR", "CLOUDIMG_PRODUCER", "CLOUDIMG_STAGE_OVER_BYTES"):
            self.env.pop(k, None)
        # Its own session, so the whole group (wrappers such as pyenv shims included) is stopped.
        self.moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(self.moto)
        if not wait_port(self.moto_port):
            sys.exit("moto_server did not start")
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{self.bucket}", method="PUT")).read()
        producer_env = dict(self.env, CLOUDIMG_METRICS_LISTEN=f"127.0.0.1:{self.producer_metrics}")
        if args.stage_over is not None:
            producer_env["CLOUDIMG_STAGE_OVER_BYTES"] = str(args.stage_over)
        self.producer = subprocess.Popen([bin_dir / "cloudimg-producer"], env=producer_env)
        self.procs.append(self.producer)
        if not wait_port(self.grpc_port):
            sys.exit("the producer did not start")

    def start_workers(self, n):
        for i in range(n):
            log = Path(self.tmp, f"worker-{len(self.workers)}.log")
            metrics = free_port()
            env = dict(self.env, RUST_LOG="info", CLOUDIMG_LOG_FORMAT="json",
                       CLOUDIMG_CONCURRENCY=str(self.args.concurrency),
                       CLOUDIMG_METRICS_LISTEN=f"127.0.0.1:{metrics}")
            p = subprocess.Popen([self.bin_dir / "cloudimg-worker"], env=env, stderr=open(log, "w"))
            self.workers.append((p, log, metrics))
            wait_port(metrics, 10)

    def stop_workers(self):
        for p, _, _ in self.workers:
            p.send_signal(signal.SIGTERM)
        for p, _, _ in self.workers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.workers = []

    def done_events(self, wanted):
        done = {}
        for _, log, _ in self.workers:
            for line in log.read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "job done" and event.get("key") in wanted:
                    done[event["key"]] = event
        return done

    def close(self):
        self.stop_workers()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        try:
            os.killpg(self.moto.pid, signal.SIGTERM)
        except OSError:
            pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if shutil.which("rabbitmqctl"):
            for q in (self.queue, self.queue + ".dead"):
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", q], capture_output=True)


def throughput(stack, args, photos, send, n_workers):
    """One saturated run with `n_workers` worker processes; returns its figures."""
    stack.start_workers(n_workers)
    # Warm up (connections, caches), not measured.
    subprocess.run(send + ["--wait"] + [str(p) for p in photos[:4]] + [stack.address], env=stack.env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    rabbit = rabbit_pid()
    watched = {"producer": stack.producer.pid, "rabbitmq": rabbit, "s3 endpoint (moto)": stack.moto.pid}
    before = {k: cpu_seconds(p) for k, p in watched.items()}
    workers_before = [thread_cpu(p.pid, "cloudimg-engine") for p, _, _ in stack.workers]
    metrics_before = [scrape(stack.producer_metrics)] + [scrape(m) for _, _, m in stack.workers]
    with open("/proc/stat") as f:
        cpu_line_before = [int(x) for x in f.readline().split()[1:]]
    paths = [str(p) for _ in range(args.rounds) for p in photos]
    total_bytes = sum(p.stat().st_size for p in photos) * args.rounds
    out_path = Path(stack.tmp, f"send-{n_workers}.jsonl")
    start = time.perf_counter()
    with open(out_path, "w") as out_file:
        sender = subprocess.Popen(send + ["-c", str(args.uploads)] + (["--wait"] if args.wait else [])
                                  + paths + [stack.address], env=stack.env,
                                  stdout=out_file, stderr=subprocess.DEVNULL)
        # wait4 gives the client's own CPU time (rusage of exactly that child).
        _, status, client_usage = os.wait4(sender.pid, 0)
    upload_wall = time.perf_counter() - start
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"cloudimg send failed: {[r for r in records if r['status'] == 'failed'][:3]}")
    wanted = {r["key"]: r for r in records}
    done = {}
    deadline = time.time() + 600
    while len(done) < len(wanted) and time.time() < deadline:
        done = stack.done_events(wanted)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    after = {k: cpu_seconds(p) for k, p in watched.items()}
    workers_after = [thread_cpu(p.pid, "cloudimg-engine") for p, _, _ in stack.workers]
    metrics_after = [scrape(stack.producer_metrics)] + [scrape(m) for _, _, m in stack.workers]
    with open("/proc/stat") as f:
        cpu_line_after = [int(x) for x in f.readline().split()[1:]]
    if args.wait:
        latencies = [r["latency_ms"] for r in records if r["status"] == "done"]
    else:
        latencies = [wanted[k]["latency_ms"] + e["since_accepted_ms"] for k, e in done.items()]
    stack.stop_workers()

    n = len(records)
    cpu = {k: after[k] - before[k] for k in watched}
    per_worker = []
    for (e0, r0), (e1, r1) in zip(workers_before, workers_after):
        per_worker.append({"engine": e1 - e0, "other": r1 - r0})
    cpu["worker: engine threads"] = sum(w["engine"] for w in per_worker)
    cpu["worker: everything else"] = sum(w["other"] for w in per_worker)
    cpu["client"] = client_usage.ru_utime + client_usage.ru_stime
    per_image = {k: v * 1000 / n for k, v in cpu.items()}
    shells = per_image["producer"] + per_image["client"] + per_image["worker: everything else"]
    # The whole machine's busy time over the run (everything, not only the stack).
    busy = [a - b for a, b in zip(cpu_line_after, cpu_line_before)]
    idle = busy[3] + busy[4]
    machine_busy = 1 - idle / sum(busy) if sum(busy) else float("nan")
    stages = stage_means(metrics_before[0], metrics_after[0], n)
    worker_stages = {}
    for b, a in zip(metrics_before[1:], metrics_after[1:]):
        for k, v in stage_means(b, a, n).items():
            worker_stages[k] = worker_stages.get(k, 0.0) + v
    queue_lag = sum(
        a.get("cloudimg_queue_lag_seconds_sum", 0.0) - b.get("cloudimg_queue_lag_seconds_sum", 0.0)
        for b, a in zip(metrics_before[1:], metrics_after[1:])) / n
    job = sum(
        a.get("cloudimg_job_seconds_sum", 0.0) - b.get("cloudimg_job_seconds_sum", 0.0)
        for b, a in zip(metrics_before[1:], metrics_after[1:])) / n
    return {
        "workers": n_workers,
        "worker_concurrency": args.concurrency,
        "images": n,
        "done": len(done),
        "bytes_avg": total_bytes / n,
        "wall_s": wall,
        "upload_wall_s": upload_wall,
        "images_per_s": len(done) / wall,
        "saturated_latency_ms_p50": percentile(latencies, 50),
        "saturated_latency_ms_p95": percentile(latencies, 95),
        "cpu_ms_per_image": per_image,
        "cpu_ms_per_image_total": sum(per_image.values()),
        "cpu_ms_per_image_our_shells": shells,
        "cpu_ms_per_image_worker_whole": per_image["worker: engine threads"] + per_image["worker: everything else"],
        "producer_cpu_ms_per_mb": cpu["producer"] * 1000 / (total_bytes / 1e6),
        "per_worker_process_cpu_s": per_worker,
        "per_process_cores": {k: v / wall for k, v in cpu.items()},
        "stack_cores": sum(cpu.values()) / wall,
        "machine_busy": machine_busy,
        "producer_stage_ms_per_image": {k: v * 1000 for k, v in stages.items()},
        "worker_stage_ms_per_image": {k: v * 1000 for k, v in worker_stages.items()},
        "worker_job_ms_per_image": job * 1000,
        "queue_lag_ms_per_image": queue_lag * 1000,
    }


def engine_bench(args, bin_dir, photos):
    """CPU per image of `engine-bench --threads 1` over the same list as the pipeline's run."""
    with tempfile.TemporaryDirectory(prefix="cloudimg-engine-bench-") as tmp:
        listing = Path(tmp, "list")
        listing.write_text("".join(f"{p}\n" for _ in range(args.rounds) for p in photos))
        p = subprocess.Popen([bin_dir / "engine-bench", "--threads", "1", "--list", str(listing)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit("engine-bench failed")
    return (usage.ru_utime + usage.ru_stime) * 1000 / (len(photos) * args.rounds)


def report(r):
    print(f"\n== {r['workers']} worker process(es) at CLOUDIMG_CONCURRENCY={r['worker_concurrency']}: "
          f"{r['images']} images ({r['done']} done), {r['bytes_avg'] / 1e6:.2f} MB average")
    print(f"throughput: {r['images_per_s']:.2f} images/s ({r['wall_s']:.1f} s; uploads took {r['upload_wall_s']:.1f} s)")
    print(f"latency, all queued at once (upload start to result written): "
          f"p50 {r['saturated_latency_ms_p50']:.0f} ms, p95 {r['saturated_latency_ms_p95']:.0f} ms")
    print("CPU per image:")
    for k, v in r["cpu_ms_per_image"].items():
        print(f"  {k:26} {v:7.2f} ms   ({r['per_process_cores'][k]:.2f} cores)")
    print(f"  {'total':26} {r['cpu_ms_per_image_total']:7.2f} ms   ({r['stack_cores']:.2f} cores; "
          f"machine {100 * r['machine_busy']:.0f} % busy)")
    print(f"  whole worker {r['cpu_ms_per_image_worker_whole']:.2f} ms; our shells outside the engine "
          f"(producer + client + worker non-engine) {r['cpu_ms_per_image_our_shells']:.2f} ms; "
          f"producer {r['producer_cpu_ms_per_mb']:.2f} ms per MB uploaded")
    for i, w in enumerate(r["per_worker_process_cpu_s"]):
        print(f"  worker {i}: engine {w['engine']:.2f} s, other {w['other']:.2f} s")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["producer_stage_ms_per_image"].items())
    print(f"wall time per image (ms): producer {stages}")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["worker_stage_ms_per_image"].items()
                       if k in ("fetch", "decode", "luma", "encode", "entropy_decode", "entropy_encode", "store"))
    print(f"  worker {stages}; delivery to ack {r['worker_job_ms_per_image']:.1f}; "
          f"queue wait {r['queue_lag_ms_per_image']:.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="times each photo is sent")
    ap.add_argument("--workers", default="1", help="worker process counts to run, e.g. 1,2,4")
    ap.add_argument("--concurrency", type=int, default=2, help="each worker's CLOUDIMG_CONCURRENCY")
    ap.add_argument("--uploads", type=int, default=8, help="the client's uploads in flight")
    ap.add_argument("--corpus", default=os.environ.get("CLOUDIMG_CORPUS", str(ROOT.parent / "shared/corpus")))
    ap.add_argument("--stage-over", type=int, help="the producer's CLOUDIMG_STAGE_OVER_BYTES (default: its own)")
    ap.add_argument("--pad-to", type=int, help="send copies of one small JPEG padded to this many bytes")
    ap.add_argument("--images", type=int, default=30, help="distinct padded images with --pad-to")
    ap.add_argument("--wait", action="store_true",
                    help="throughput run with `send --wait` (completion and latency from the client's polling)")
    ap.add_argument("--no-latency", action="store_true", help="skip the one-at-a-time latency run")
    ap.add_argument("--engine-bench", action="store_true", help="also time engine-bench on the same photos")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries as built")
    ap.add_argument("--bin-dir", help="take the binaries from this folder (implies --no-build)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/cloudimg-target")))
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    if not args.no_build and not args.bin_dir:
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "cloudimg-producer", "-p", "cloudimg-worker",
             "-p", "cloudimg-client"] + (["-p", "cloudimg-benches", "--bin", "engine-bench"] if args.engine_bench else []),
            cwd=ROOT, env=env, check=True)
    bin_dir = Path(args.bin_dir) if args.bin_dir else target / "release"
    if rabbit_pid() is None or not wait_port(5672, 1):
        sys.exit("RabbitMQ is not running on 127.0.0.1:5672")
    tmp = tempfile.mkdtemp(prefix="cloudimg-bench-")
    if args.pad_to:
        source = Path(args.corpus, PAD_SOURCE)
        photos = []
        for i in range(args.images):
            path = Path(tmp, f"padded-{i}.jpg")
            data = padded_jpeg(source, args.pad_to)
            # Distinct content per image (a byte in the first comment), same size.
            path.write_bytes(data[:6] + bytes([i % 256]) + data[7:])
            photos.append(path)
    else:
        photos = sorted(Path(args.corpus, "bench").glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos in {args.corpus}/bench")
    send = [str(bin_dir / "cloudimg"), "send", "--json", "--latency"]

    results = {"cpus": os.cpu_count(), "stage_over": args.stage_over, "pad_to": args.pad_to, "runs": []}
    stack = None
    try:
        stack = Stack(args, bin_dir, tmp)
        # The size of one job on the queue: one photo sent before any worker runs, read with
        # rabbitmqctl list_queues (read-only); the first run's workers then take it.
        subprocess.run(send + [str(photos[0]), stack.address], env=stack.env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        if shutil.which("rabbitmqctl"):
            out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages", "message_bytes"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                fields = line.split()
                if len(fields) == 3 and fields[0] == stack.queue and fields[1] == "1":
                    results["message_bytes"] = int(fields[2])
                    print(f"one job on the queue: {fields[2]} bytes ({photos[0].stat().st_size} bytes uploaded)")
        for n in [int(x) for x in args.workers.split(",")]:
            r = throughput(stack, args, photos, send, n)
            results["runs"].append(r)
            report(r)
        if not args.no_latency:
            stack.start_workers(1)
            quiet = []
            for photo in photos:
                out = subprocess.run(send + ["--wait", str(photo), stack.address], env=stack.env,
                                     capture_output=True, text=True, check=True).stdout
                quiet.append(json.loads(out)["latency_ms"])
            stack.stop_workers()
            results["single_latency_ms_p50"] = percentile(quiet, 50)
            results["single_latency_ms_p95"] = percentile(quiet, 95)
            print(f"\nlatency, one image at a time (send --wait, includes status polling): "
                  f"p50 {results['single_latency_ms_p50']:.0f} ms, p95 {results['single_latency_ms_p95']:.0f} ms")
    finally:
        if stack is not None:
            stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.engine_bench:
        eb = engine_bench(args, bin_dir, photos)
        results["engine_bench_cpu_ms_per_image"] = eb
        print(f"\nengine-bench --threads 1, same {len(photos) * args.rounds} images: {eb:.2f} ms CPU per image")
        for r in results["runs"]:
            print(f"  {r['workers']} worker(s): whole worker {r['cpu_ms_per_image_worker_whole']:.2f} ms, "
                  f"{r['cpu_ms_per_image_worker_whole'] / eb:.3f}x engine-bench")
    results["loadavg_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if any(r["images"] != r["done"] for r in results["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
