"""A whole fleet on one machine: a local Hub stand-in, N replicas that follow it, one trainer.

    python scripts/fleet.py                      # 2 replicas on ports 7860, 7861; Ctrl-C stops all

It is the "N replicas plus a trainer" layout of the README's Scaling out, with every part real but
the Hub: tests/fake_hub.py (a small in-memory server that speaks the Hub's HTTP API; the real
huggingface_hub client talks to it through HF_ENDPOINT) stands in for huggingface.co. Then

  - N `python app.py` replicas, DADC_TRAINER=remote, each with its own DADC_HOME under --home:
    they serve, store and push flags to the dataset repo, train nothing, and follow the model repo
    every --follow-every seconds; they share one DADC_IDENTITY_KEY (one visitor, one id);
  - one `python -m dadc trainer --every S`: a pass every S seconds pulls every replica's flags
    and promotes rounds on the model repo.

The first stdout line is JSON: the Hub's address, the replicas' addresses and their homes. Round
settings come from the environment as usual (DADC_THRESHOLD, DADC_ROUND_*). SIGTERM or Ctrl-C
stops the trainer and the replicas (each makes its final push) and then the Hub. The Hub stand-in
keeps its repos in memory: they are gone when the fleet stops (the homes stay).
"""
import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_hub import FakeHub  # noqa: E402

TOKEN = "hf_fake_write_token"  # the token the stand-in accepts


def arguments():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=7860, help="the first replica's port; the next ones follow")
    p.add_argument("--hub-port", type=int, default=0, help="the Hub stand-in's port (default: a free one)")
    p.add_argument("--home", default=".dadc/fleet", help="a DADC_HOME per replica and one for the trainer under it")
    p.add_argument("--follow-every", type=float, default=5.0, help="seconds between a replica's model repo checks")
    p.add_argument("--trainer-every", type=float, default=10.0, help="seconds between the trainer's passes")
    return p.parse_args()


def start(cmd, env, log):
    return subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def launch(args, hub):
    """(the replicas' and the trainer's processes, what the first line says)."""
    home = Path(args.home).resolve()
    shared = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
              "DADC_DATASET_REPO": "fleet/flags", "DADC_MODEL_REPO": "fleet/rounds",
              "DADC_IDENTITY_KEY": secrets.token_hex(32), "DADC_FOLLOW_EVERY": str(args.follow_every),
              "DADC_PUSH_DELAY": os.environ.get("DADC_PUSH_DELAY", "2"), "PYTHONPATH": str(ROOT)}
    procs, said = [], {"hub": hub.url, "replicas": [], "homes": []}
    for i in range(args.replicas):
        rhome = home / f"replica-{i + 1}"
        rhome.mkdir(parents=True, exist_ok=True)
        env = {**shared, "DADC_HOME": str(rhome), "DADC_TRAINER": "remote", "GRADIO_SERVER_NAME": "127.0.0.1",
               "GRADIO_SERVER_PORT": str(args.port + i)}
        procs.append(start(["app.py"], env, open(rhome / "app.log", "a")))
        said["replicas"].append(f"http://127.0.0.1:{args.port + i}")
        said["homes"].append(str(rhome))
    thome = home / "trainer"
    (thome / "mnist").mkdir(parents=True, exist_ok=True)
    cache = ROOT / ".dadc" / "mnist" / "mnist.safetensors"
    if cache.exists() and not (thome / "mnist" / cache.name).exists():
        (thome / "mnist" / cache.name).symlink_to(cache)  # else the trainer fetches MNIST itself
    procs.append(start(["-m", "dadc", "trainer", "--every", str(args.trainer_every)],
                       {**shared, "DADC_HOME": str(thome)}, open(thome / "trainer.log", "a")))
    said["trainer_home"] = str(thome)
    return procs, said


def main():
    args = arguments()
    hub = FakeHub(port=args.hub_port).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # then the finally below stops everything
    procs = []
    try:
        procs, said = launch(args, hub)
        print(json.dumps(said), flush=True)
        print(f"replicas: {', '.join(said['replicas'])} · logs: app.log / trainer.log in each home", file=sys.stderr)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process of the fleet exited: stopping the rest (see its log)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):  # the trainer first, then the replicas: each pushes what it has
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        hub.stop()


if __name__ == "__main__":
    sys.exit(main())
