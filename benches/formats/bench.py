#!/usr/bin/env python3
"""The formats' throughput against the old system, side by side on one pinned core.

For each format given (by extension, from --corpus/formats-bench), every round runs, on the same
core (taskset), first the release `engine-bench --threads 1` over the files, then Pillow's path
over the same files in this process (`Image.open(f).convert("L").save(out, quality=85)`, what
the Python system did), and reports each side's best and median MP/s over the rounds and the
ratio of the medians (the issue's goal: 1.3x Pillow, one thread). Rounds alternate so a busy
machine slows both sides alike.

Usage: python3 benches/formats/bench.py [--rounds 5] [--core 1] [--formats webp,avif,heic]
       [--corpus DIR] [--bench-bin target/release/engine-bench] [--json OUT]
Build first: cargo build --release -p cloudimg-benches --bin engine-bench
Needs Pillow and, for HEIC, pillow-heif (pinned 13.0.0 and 1.1.1 in scripts/test.sh).
"""

import argparse
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def pillow_round(files):
    """Seconds for Pillow's path over `files`, and the megapixels converted."""
    from PIL import Image

    if any(p.endswith((".heic", ".heif")) for p in files):
        import pillow_heif

        # As the issue measures the old system: one decoding thread.
        pillow_heif.options.DECODE_THREADS = 1
        pillow_heif.register_heif_opener()
    megapixels = 0.0
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            megapixels += im.width * im.height / 1e6
            out = io.BytesIO()
            im.convert("L").save(out, "JPEG", quality=85)
    return time.perf_counter() - start, megapixels


def engine_round(binary, files, core):
    """Wall seconds and megapixels of one `engine-bench --threads 1` run, from its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as summary:
        subprocess.run(  # exits 1 when a file fails; the JSON says which
            ["taskset", "-c", str(core), binary, "--threads", "1", "--quality", "85",
             "--json", summary.name, *files],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        with open(summary.name) as f:
            data = json.load(f)
    if data["failures"]:
        sys.exit(f"engine-bench refused files: {data['failures']}")
    return data["wall_s"], data["megapixels"]


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/cloudimg-target"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--formats", default="webp,avif,heic", help="comma-separated extensions")
    parser.add_argument("--corpus", default=os.environ.get(
        "CLOUDIMG_CORPUS", os.path.join(root, "..", "shared", "corpus")))
    parser.add_argument("--bench-bin", default=os.path.join(target, "release", "engine-bench"))
    parser.add_argument("--json")
    args = parser.parse_args()

    os.sched_setaffinity(0, {args.core})
    import PIL

    results = {}
    for ext in args.formats.split(","):
        files = sorted(glob.glob(os.path.join(args.corpus, "formats-bench", f"*.{ext}")))
        if not files:
            sys.exit(f"no formats-bench/*.{ext} under {args.corpus}")
        ours, theirs = [], []
        for _ in range(args.rounds):
            secs, mp = engine_round(args.bench_bin, files, args.core)
            ours.append(mp / secs)
            secs, mp = pillow_round(files)
            theirs.append(mp / secs)
        row = {
            "files": len(files),
            "megapixels": mp,
            "engine_mp_s": {"best": max(ours), "median": statistics.median(ours)},
            "pillow_mp_s": {"best": max(theirs), "median": statistics.median(theirs)},
            "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
        }
        results[ext] = row
        print(
            f"{ext}: {len(files)} files, {mp:.1f} MP, core {args.core}, {args.rounds} rounds: "
            f"engine {row['engine_mp_s']['median']:.1f} MP/s (best {row['engine_mp_s']['best']:.1f}), "
            f"Pillow {PIL.__version__} {row['pillow_mp_s']['median']:.1f} MP/s "
            f"(best {row['pillow_mp_s']['best']:.1f}): {row['ratio_of_medians']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


main()
