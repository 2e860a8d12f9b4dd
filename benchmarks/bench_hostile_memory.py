"""Hostile canvases against `python app.py` (security audit, findings 2 and 11): what they cost the
server in memory and CPU.

  memory  idle RSS; peak RSS (VmHWM, reset just before) while 8 clients each send one Sketchpad
          value with a mostly-empty 4096x4096 PNG in every slot (background, composite, 4 layers:
          ~60 KB on the wire, 6 x 64 MiB decoded as RGBA) to /predict and /flag at once; the same
          with the three slots the page itself fills (background, composite, one layer); RSS 30 s
          later; and whether the app still answers a normal /predict.
  zTXt    a 448x448 drawing carrying 63 zTXt chunks (each 1 MB of zeros, ~1 KB compressed: ~85 KB in
          all) sent to the page's light event: the server's CPU ms per request (utime + stime from
          /proc/<pid>/stat) against a plain drawing's, and the latency of a plain drawing while 16
          clients send the zTXt one.

    python benchmarks/bench_hostile_memory.py [--clients 8] [--after 30] [--ztxt-clients 16]

The app runs as `python app.py` on a fresh DADC_HOME (the shipped round, no retraining during the
run); run this on the code before and after a change to compare. tests/test_hostile_memory.py
builds its PNGs and sends its requests with the functions below.
"""
import argparse
import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIB = 1 << 20
CANVAS = 448


# --- PNGs --------------------------------------------------------------------------------------------

def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_png(side=4096):
    """A valid side x side RGBA PNG, transparent but for one opaque black bar (a "1"): small on the
    wire (~60 KB at 4096), side*side*4 bytes decoded. Built row by row, never whole in memory."""
    blank = b"\x00" + b"\x00\x00\x00\x00" * side
    left, right = side * 47 // 100, side * 53 // 100
    inked = b"\x00" + b"\x00\x00\x00\x00" * left + b"\x00\x00\x00\xff" * (right - left) + \
        b"\x00\x00\x00\x00" * (side - right)
    z, parts = zlib.compressobj(9), []
    for y in range(side):
        parts.append(z.compress(inked if side // 4 <= y < side * 3 // 4 else blank))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
            + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))


def drawing_png():
    """A plain 448x448 drawing as the page sends it: a black bar on white, RGBA."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (CANVAS, CANVAS), "white")
    ImageDraw.Draw(img).rectangle((210, 100, 238, 350), fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def ztxt_png(n=63, text_bytes=1_000_000):
    """drawing_png() with n zTXt chunks after IHDR, each text_bytes of zeros compressed (~1 KB each;
    PIL inflates each one, up to its 1 MB per-chunk limit, when it opens the PNG)."""
    png = drawing_png()
    ihdr_end = 8 + 8 + 13 + 4
    text = zlib.compress(b"\0" * text_bytes, 9)
    extra = b"".join(_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(n))
    return png[:ihdr_end] + extra + png[ihdr_end:]


def data_url(png):
    return "data:image/png;base64," + base64.b64encode(png).decode()


# --- the app -----------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    """{"VmRSS": bytes, "VmHWM": bytes, ...} of a process, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid):
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0: "5" to clear_refs). False if not
    allowed: the peak then counts from the process's start."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_s(pid):
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload(url, png, name="h.png"):
    """Upload one file to Gradio; returns its FileData value (the path can be sent many times)."""
    boundary = os.urandom(8).hex()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/gradio_api/upload", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    path = json.load(urllib.request.urlopen(req, timeout=60))[0]
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def call(url, api_name, data, address="198.51.100.9", timeout=300):
    """POST /gradio_api/call/<api_name> and read its answer: (ok, payload text)."""
    req = urllib.request.Request(f"{url}/gradio_api/call/{api_name}", json.dumps({"data": data}).encode(),
                                 {"Content-Type": "application/json", "X-Forwarded-For": address})
    event_id = json.load(urllib.request.urlopen(req, timeout=timeout))["event_id"]
    with urllib.request.urlopen(f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as r:
        text = r.read().decode()
    event, _, payload = text.rpartition("event: ")[2].partition("\ndata: ")
    return event.strip() == "complete", payload.strip()


_FN = {}


def light_call(url, data, address="198.51.100.10", marker="dadc.latest()"):
    """Call the page's private light event whose js= holds `marker` through the queue, as any client
    can; returns (success, output)."""
    if (url, marker) not in _FN:  # read once: /config costs the server as much as a light event
        config = json.load(urllib.request.urlopen(url + "/config", timeout=60))
        _FN[url, marker] = next(d["id"] for d in config["dependencies"] if marker in (d.get("js") or ""))
    fn = _FN[url, marker]
    session = os.urandom(8).hex()
    body = json.dumps({"data": data, "fn_index": fn, "session_hash": session, "event_data": None,
                       "trigger_id": None}).encode()
    urllib.request.urlopen(urllib.request.Request(url + "/gradio_api/queue/join", body, {
        "Content-Type": "application/json", "X-Forwarded-For": address}), timeout=60).read()
    with urllib.request.urlopen(f"{url}/gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg.get("success"), msg.get("output")
    raise RuntimeError("no answer from the queue")


def canvas_value(fd, slots):
    """A Sketchpad value with `fd` in `slots` of: background, composite, layers (a count)."""
    return {"background": fd if "background" in slots else None,
            "composite": fd if "composite" in slots else None,
            "layers": [fd] * slots.get("layers", 0), "id": None}


def at_once(jobs):
    """Run the callables in threads at once; returns their results (or exceptions), in order."""
    out = [None] * len(jobs)

    def run(i):
        try:
            out[i] = jobs[i]()
        except Exception as e:  # reported, not raised
            out[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def hostile_burst(url, pid, fd, slots, clients):
    """`clients` requests at once, half /predict and half /flag, each with `fd` in `slots`. Returns
    (peak RSS bytes during the burst, wall s, answers). The peak is VmHWM, reset just before."""
    value = canvas_value(fd, slots)
    jobs = [(lambda i=i: call(url, "predict", [value], f"198.51.100.{20 + i}") if i % 2 == 0
             else call(url, "flag", [value, 1], f"198.51.100.{20 + i}")) for i in range(clients)]
    exact = reset_peak(pid)
    base = proc_status(pid)["VmRSS"]
    peak, done = [base], threading.Event()

    def sample():  # a fallback when VmHWM cannot be reset
        while not done.is_set():
            peak.append(proc_status(pid)["VmRSS"])
            time.sleep(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    answers = at_once(jobs)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    top = proc_status(pid)["VmHWM"] if exact else max(peak)
    return top, wall, answers


def short(answer):
    if isinstance(answer, Exception):
        return f"error {type(answer).__name__}: {answer}"[:120]
    ok, payload = answer
    return ("ok " if ok else "refused ") + payload[:100]


class App:
    """`python app.py` on a fresh DADC_HOME and a free port; the shipped round, no retraining."""

    def __init__(self, **env):
        self.home = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
        cache = ROOT / ".dadc" / "mnist" / "mnist.safetensors"
        if cache.exists():
            (self.home / "mnist").mkdir()
            (self.home / "mnist" / "mnist.safetensors").symlink_to(cache)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "DADC_HOME": str(self.home), "GRADIO_SERVER_NAME": "127.0.0.1",
                "GRADIO_SERVER_PORT": str(self.port), "PYTHONPATH": str(ROOT),
                "DADC_THRESHOLD": "1000000", **env}
        full.pop("GRADIO_TEMP_DIR", None)
        self.log = open(self.home / "app.log", "w")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the app did not start: " + (self.home / "app.log").read_text())
            try:
                urllib.request.urlopen(self.url + "/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# --- the figures -------------------------------------------------------------------------------------

def memory(app, clients, after_s):
    pid, url = app.proc.pid, app.url
    normal = canvas_value(upload(url, drawing_png(), "d.png"), {"background": 1})
    for _ in range(3):  # warm: the model, lazy imports, Gradio's first requests
        call(url, "predict", [normal])
    time.sleep(2)
    idle = proc_status(pid)["VmRSS"]
    print(f"idle RSS: {idle / MIB:.0f} MiB")
    fd = upload(url, hostile_png(), "h.png")
    for name, slots in (("every slot (background, composite, 4 layers)", {"background": 1, "composite": 1,
                                                                          "layers": 4}),
                        ("the page's 3 slots (background, composite, 1 layer)", {"background": 1,
                                                                                 "composite": 1, "layers": 1})):
        top, wall, answers = hostile_burst(url, pid, fd, slots, clients)
        print(f"{clients} clients at once, a 4096x4096 PNG in {name}: peak RSS {top / MIB:.0f} MiB "
              f"(+{(top - idle) / MIB:.0f} MiB over idle), {wall:.1f} s")
        for a in sorted({short(a) for a in answers}):
            print(f"    answer: {a}")
        print(f"  RSS right after: {proc_status(pid)['VmRSS'] / MIB:.0f} MiB")
    time.sleep(after_s)
    print(f"RSS {after_s} s later: {proc_status(pid)['VmRSS'] / MIB:.0f} MiB "
          f"(+{(proc_status(pid)['VmRSS'] - idle) / MIB:.0f} MiB over idle)")
    t = time.perf_counter()
    ok, payload = call(url, "predict", [normal])
    print(f"then a normal /predict: {'ok' if ok else 'FAILED'} in {(time.perf_counter() - t) * 1e3:.0f} ms: "
          f"{payload[:80]}")


def cpu_per_request(app, text, n):
    before = cpu_s(app.proc.pid)
    answers = [light_call(app.url, [text, 1]) for _ in range(n)]
    return (cpu_s(app.proc.pid) - before) / n * 1e3, answers[-1]


def ztxt(app, clients, n=10, probe_s=6.0):
    plain, hostile = data_url(drawing_png()), data_url(ztxt_png())
    light_call(app.url, [plain, 1])
    print(f"zTXt PNG: {len(base64.b64decode(hostile.split(',')[1])):,} bytes")
    for name, text in (("plain drawing", plain), ("zTXt drawing", hostile)):
        ms, (ok, out) = cpu_per_request(app, text, n)
        said = json.dumps(out)[:90] if ok else (out or {}).get("error")
        print(f"  {name}: server CPU {ms:.0f} ms per request (n={n}); {'ok' if ok else 'refused'}: {said}")
    stop, lat = threading.Event(), []

    def flood(i):
        while not stop.is_set():
            light_call(app.url, [hostile, 1], f"198.51.100.{100 + i}")
    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    end = time.monotonic() + probe_s
    while time.monotonic() < end:
        t0 = time.perf_counter()
        light_call(app.url, [plain, 1], "198.51.100.99")
        lat.append((time.perf_counter() - t0) * 1e3)
    stop.set()
    for t in threads:
        t.join(60)
    lat.sort()
    quiet = []
    for _ in range(10):
        t0 = time.perf_counter()
        light_call(app.url, [plain, 1], "198.51.100.98")
        quiet.append((time.perf_counter() - t0) * 1e3)
    quiet.sort()
    print(f"  a plain drawing's latency, alone: p50 {quiet[len(quiet) // 2]:.0f} ms; while {clients} clients "
          f"send the zTXt one: p50 {lat[len(lat) // 2]:.0f} ms, max {lat[-1]:.0f} ms (n={len(lat)})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--after", type=int, default=30, help="seconds to wait before the last RSS reading")
    p.add_argument("--ztxt-clients", type=int, default=16)
    args = p.parse_args()
    app = App()
    try:
        memory(app, args.clients, args.after)
        ztxt(app, args.ztxt_clients)
    finally:
        app.stop()


if __name__ == "__main__":
    main()
