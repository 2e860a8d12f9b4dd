"""What a hostile dataset repo can make a restore bring in: python benchmarks/bench_restore_bounds.py

A local Hub stand-in (tests/fake_hub.py) holds two small shards written as a hostile writer would
(dictionary encoding, zstd): 100 28x28 PNGs each carrying 4 MiB of zeros after their end, and 60,000
rows with unique ids sharing one image. A fresh home restores them (hub/restore.restore_flags). Prints
the bytes downloaded, the rows added, the MiB written into the home, the seconds, and the process's
resident memory before and at its peak during the restore (VmHWM, reset first), then one JSON line.
"""
import gc
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import conftest  # noqa: E402,F401  (HF_ENDPOINT on a free local port, offline by default)
import huggingface_hub.constants  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from fake_hub import FakeHub  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from test_hub_layout import DATASET, TOKEN, digit, png, record, seed  # noqa: E402

from dadc.hub import restore  # noqa: E402
from dadc.hub.layout import FLAG_SCHEMA  # noqa: E402
from dadc.store import FlagStore  # noqa: E402


def packed(records):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=FLAG_SCHEMA), buf, use_dictionary=True, compression="zstd")
    return buf.getvalue()


def status(key):
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def main():
    huggingface_hub.constants.HF_HUB_OFFLINE = False
    hub = FakeHub(port=int(os.environ["HF_ENDPOINT"].rsplit(":", 1)[1])).start()
    shards = {"data/aaaa00000001/00000000.parquet":
              packed([record(f"j{i}", image=png(digit(1)) + b"\0" * (4 * 2**20)) for i in range(100)]),
              "data/aaaa00000002/00000000.parquet": packed([record(f"r{i}", image=png(digit(3))) for i in range(60_000)])}
    seed(hub, shards)
    downloaded = sum(len(v) for v in shards.values())
    del shards
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    before = status("VmRSS")
    home = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    start = time.perf_counter()
    filled = restore.restore_flags(HfApi(token=TOKEN), DATASET, FlagStore(home))
    seconds = time.perf_counter() - start
    written = sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) / 2**20
    out = {"downloaded_bytes": downloaded, "rows_added": filled.added, "written_mib": round(written, 1),
           "seconds": round(seconds, 1), "rss_before_mib": round(before), "rss_peak_mib": round(status("VmHWM")),
           "skipped": filled.skipped}
    print(f"downloaded {downloaded} bytes: {filled.added} rows added, {written:.1f} MiB written in {seconds:.1f} s; "
          f"RSS {before:.0f} MiB before, {status('VmHWM'):.0f} MiB at the peak; skipped {filled.skipped}")
    print(json.dumps(out))
    hub.stop()


if __name__ == "__main__":
    main()
