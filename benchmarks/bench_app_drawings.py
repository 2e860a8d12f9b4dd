"""Accuracy on folders of drawn digits through /predict of the app as a user starts it: `python app.py`
in a subprocess (fresh DADC_HOME in a temp folder, a free port on 127.0.0.1, no HF token, no Hub
repos), serving models/round-000 (or --model), called with gradio_client the way tests/test_app.py
does (a Sketchpad value whose background is the drawing's PNG). What counts is the top label /predict
answers, compared with labels.csv; a request that fails or that the app refuses to read (a blank or
all-ink canvas: its answer is not a digit) is wrong, and also counted as an error.
Targets (issue): mouse-drawn varied styles >= 98.5 %, MNIST-style canvases >= 99.4 %, font digits >= 98 %.

    python benchmarks/bench_app_drawings.py --drawings DIR [DIR ...]     # folders with labels.csv
    python benchmarks/bench_app_drawings.py --make 100 [--mnist-n 1000] [--seed 31337]
        [--clients 4] [--limit N] [--styles] [--json] [--misread misread.csv] [--model DIR]

labels.csv has columns file,label[,family,style] (as dadc.synth.drawings.make and
dadc.campaign.simulate.make_drawings write them); a row without a family gets its folder's name. --make
draws the folders itself in a temp folder: dadc.synth.drawings.make (N of every family in
drawings.FAMILIES) and --mnist-n MNIST test digits twice: on canvases of every size, format and
ink colour (dadc.campaign.simulate.make_drawings, family "mnist_anywhere") and drawn large and centred
(dadc.synth.augment.large, family "mnist_canvas", as in train's metrics.json); MNIST cached in .dadc/.
Use evaluation seeds of your own (default 31337), never the training ones. /predict has no rate
limit (dadc/studio/limits.py limits /flag only), so none is lifted.
"""
import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_rows(folders, limit=None):
    """[{path, file, label, family, style}] from each folder's labels.csv; at most `limit` per family."""
    rows, per_family = [], {}
    for folder in map(Path, folders):
        with open(folder / "labels.csv", newline="") as f:
            for r in csv.DictReader(f):
                family = r.get("family") or folder.name
                if limit and per_family.get(family, 0) >= limit:
                    continue
                per_family[family] = per_family.get(family, 0) + 1
                rows.append({"path": str(folder / r["file"]), "file": r["file"], "label": int(r["label"]),
                             "family": family, "style": r.get("style") or "-"})
    return rows


def make_mnist_large(out, n, seed):
    """n MNIST test digits (a seeded pick) each drawn 14x large and centred (dadc.synth.augment.large), and labels.csv."""
    from dadc.synth import augment
    from dadc.model import mnist as data

    arrays = data.fetch(ROOT / ".dadc", log=lambda m: print(m, file=sys.stderr))
    pick = np.random.default_rng([seed, 28]).choice(len(arrays["test_y"]), size=n, replace=False)
    out.mkdir(parents=True)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for i, k in enumerate(pick):
            augment.large(arrays["test_x"][k] / 255).save(out / f"{i:05d}.png")
            w.writerow([f"{i:05d}.png", int(arrays["test_y"][k])])
    return out


def start_app(home, model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if Path(model).resolve() != (ROOT / "models" / "round-000").resolve():  # seed the registry with it
        shutil.copytree(model, Path(home) / "rounds" / "round-000")
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_TOKEN", "DADC_DATASET_REPO", "DADC_MODEL_REPO", "SPACE_ID", "OAUTH_CLIENT_ID", "GRADIO_TEMP_DIR")}
    env.update(DADC_HOME=str(home), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    log = Path(home) / "app.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                return proc, url
            except OSError:
                time.sleep(0.5)
    except BaseException:  # Ctrl-C while it starts
        proc.kill()
        raise
    proc.kill()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise SystemExit(f"the app did not start within 120 s (exit {proc.wait()}):\n{tail}")


def ask_all(url, rows, clients):
    """Send every row's drawing to /predict from `clients` threads, one gradio_client each."""
    from gradio_client import Client, handle_file

    local = threading.local()

    def ask(row):
        if not hasattr(local, "client"):
            local.client = Client(url, verbose=False)
        t = time.perf_counter()
        try:
            value = {"background": handle_file(row["path"]), "layers": [], "composite": None}
            said = str(local.client.predict(value, api_name="/predict")["label"])
            error = None if said in "0123456789" and len(said) == 1 else f"refused: {said}"
        except Exception as e:  # counted, not raised
            said, error = "", repr(e)[:200]
        return dict(row, said=said, error=error, right=error is None and said == str(row["label"]),
                    seconds=time.perf_counter() - t)
    pool = ThreadPoolExecutor(clients)
    try:
        return list(pool.map(ask, rows))
    finally:  # on Ctrl-C, drop the requests not yet sent
        pool.shutdown(wait=False, cancel_futures=True)


def tally(results, key):
    out = {}
    for r in results:
        n = out.setdefault(key(r), {"n": 0, "right": 0, "errors": 0})
        n["n"] += 1
        n["right"] += r["right"]
        n["errors"] += r["error"] is not None
    return {k: {"n": v["n"], "acc": v["right"] / v["n"], "errors": v["errors"]} for k, v in sorted(out.items())}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--drawings", nargs="+", metavar="DIR", help="folders with labels.csv")
    src.add_argument("--make", type=int, metavar="N", help="draw N of every dadc.synth.drawings family")
    p.add_argument("--mnist-n", type=int, default=1000, help="with --make: MNIST canvases (0: none)")
    p.add_argument("--seed", type=int, default=31337, help="with --make (never a training seed)")
    p.add_argument("--model", default=str(ROOT / "models" / "round-000"), help="the round the app serves")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--limit", type=int, help="at most this many drawings per family")
    p.add_argument("--styles", action="store_true", help="also accuracy per digit/style")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--misread", metavar="FILE.csv", help="write the misread rows here")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-app-drawings-"))
    proc = None
    try:
        folders = args.drawings
        if args.make:
            from dadc.synth import drawings
            from dadc.campaign import simulate
            folders = [drawings.make(tmp / "drawings", args.make, seed=args.seed)]
            if args.mnist_n:
                folders.append(simulate.make_drawings(tmp / "mnist_anywhere", args.mnist_n, ROOT / ".dadc",
                                                      seed=args.seed))
                folders.append(make_mnist_large(tmp / "mnist_canvas", args.mnist_n, args.seed))
        rows = read_rows(folders, args.limit)
        if not rows:
            raise SystemExit("no drawings to ask about")
        (tmp / "home").mkdir()
        proc, url = start_app(tmp / "home", args.model)
        start = time.perf_counter()
        results = ask_all(url, rows, args.clients)
        wall = time.perf_counter() - start
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    seconds = [r["seconds"] for r in results]
    out = {"model": args.model, "seed": args.seed if args.make else None, "clients": args.clients,
           "all": tally(results, lambda r: "all").get("all"), "by_family": tally(results, lambda r: r["family"]),
           "wall_s": round(wall, 1), "p50_ms": round(float(np.median(seconds)) * 1e3, 1),
           "p90_ms": round(float(np.percentile(seconds, 90)) * 1e3, 1)}
    if args.styles:
        out["by_style"] = tally(results, lambda r: f"{r['label']}/{r['style']}")
    if args.misread:
        with open(args.misread, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "said", "family", "style"])
            for r in results:
                if not r["right"]:
                    where = r["path"] if args.drawings else f"{Path(r['path']).parent.name}/{r['file']}"
                    w.writerow([where, r["label"], r["said"] or r["error"], r["family"], r["style"]])
    if args.json:
        return print(json.dumps(out))
    print(f"{out['model']} through /predict of `python app.py`, {args.clients} clients"
          + (f", drawings made with seed {args.seed}" if args.make else ""))
    groups = [("family", out["by_family"])] + ([("digit/style", out["by_style"])] if args.styles else [])
    for title, table in groups:
        print(f"\n{title:24s} {'n':>6s} {'accuracy':>9s} {'errors':>7s}")
        for k, v in table.items():
            print(f"{k:24s} {v['n']:6d} {v['acc']:9.2%} {v['errors']:7d}")
    a = out["all"]
    print(f"{'all':24s} {a['n']:6d} {a['acc']:9.2%} {a['errors']:7d}")
    print(f"\nwall {out['wall_s']} s ({a['n'] / max(wall, 1e-9):.1f} req/s); "
          f"request p50 {out['p50_ms']} ms, p90 {out['p90_ms']} ms")


if __name__ == "__main__":
    main()
