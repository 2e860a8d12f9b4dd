"""Per-request cost against the store size: python benchmarks/bench_scale.py [--sizes 1000 10000 100000]

For each size, in a fresh process and a fresh DADC_HOME: N flags (MNIST test digits, 1 in 10 with a
vote) are written through FlagStore.append with fsync turned off for the seeding only (so 100k
take seconds, not minutes; the files are the real layout). Then, server side (the Studio that the
page's events call, no HTTP): start-up (Studio + the first dashboard), then the median of 50
requests each of flag, next-to-verify, verify and dashboard, and the resident memory. `append_ms` is
the flag's durable write alone (FlagStore.append of the 28x28 and the kept canvas: PNG encoding,
the images' and their folder's fsyncs, the row's): the part of `flag_ms` that is not /predict's work. `--round`
also times one retraining round (RoundConfig from the environment) on that store.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def seed(home, n, arrays):
    from dadc.store import FlagStore

    real_fsync, os.fsync = os.fsync, lambda fd: None  # seeding only: the store's layout, not its durability
    try:
        store = FlagStore(home)
        ids = []
        for i in range(n):
            k = i % len(arrays["test_y"])
            label = int(arrays["test_y"][k])
            ids.append(store.append(arrays["test_x"][k], label, prediction=(label + i % 2) % 10,
                                    confidences=[0.1] * 10, round=0, visitor=f"anon-{i % 997:04x}"))
            if i % 10 == 0:
                store.vote(ids[-1], f"anon-voter{i % 13}", bool(i % 3))
    finally:
        os.fsync = real_fsync


def median_ms(fn, n=50):
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1e3


def one_size(n, do_round):
    from dadc import config
    from dadc.model import mnist as data
    from dadc.studio.service import Studio
    from dadc.synth.canvas import paste_mnist as draw

    home = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    (home / "mnist").mkdir()
    (home / "mnist" / "mnist.safetensors").symlink_to(ROOT / ".dadc" / "mnist" / "mnist.safetensors")
    arrays = data.fetch(home, log=lambda m: None)
    t = time.perf_counter()
    seed(home, n, arrays)
    seeded = time.perf_counter() - t
    os.environ.update(DADC_HOME=str(home), DADC_THRESHOLD="1000000000", DADC_FLAG_LIMIT="1000000",
                      DADC_FLAG_BUDGET="1000000")
    t = time.perf_counter()
    studio = Studio(config.from_env()).start()
    studio.dashboard()
    startup = time.perf_counter() - t
    canvas = draw(arrays["test_x"][0])
    from dadc.preprocess import to_mnist
    from dadc.store import keepable

    x, kept = to_mnist(canvas), keepable(canvas)
    out = {"flags": n, "seed_s": round(seeded, 1), "startup_s": round(startup, 2),
           "flag_ms": median_ms(lambda i: studio.flag(canvas, 3, f"anon-bench{i}")),
           "append_ms": median_ms(lambda i: studio.store.append(x, 3, canvas=kept, prediction=3, visitor="b")),
           "next_ms": median_ms(lambda i: studio.next_to_vote(f"anon-judge{i}"))}
    ids = [studio.next_to_vote(f"anon-judge{i}")["id"] for i in range(50)]
    out["verify_ms"] = median_ms(lambda i: studio.vote(ids[i], True, f"anon-judge{i}"))
    out["dashboard_ms"] = median_ms(lambda i: studio.dashboard())
    out["rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if do_round:
        t = time.perf_counter()
        studio.job.run_round(n)
        out["round_s"] = round(time.perf_counter() - t, 1)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--round", action="store_true", help="also time one retraining round per size")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.round)))
        return
    rows = []
    for n in args.sizes:  # a process per size: memory and caches are its own
        cmd = [sys.executable, __file__, "--one", str(n)] + (["--round"] if args.round else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
