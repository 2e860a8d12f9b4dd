"""The local fleet (scripts/fleet.py) end to end: a Hub stand-in, two `python app.py` replicas with
DADC_TRAINER=remote and one `python -m dadc trainer`, all real processes. Flags made on either
replica reach the Hub, the trainer's round learns from both, no replica trains, and both serve the
promoted round within 30 s of its promotion."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

from test_app import ROOT, canvas_file, free_port, mnist, next_address, round0  # noqa: F401
from test_rounds import TINY

TOKEN = "hf_fake_write_token"


def wait(cond, timeout, what, proc):
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, f"the fleet exited while waiting for {what}"
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def two_free_ports():
    """A free port whose next one is free too: the fleet's replicas take PORT and PORT + 1."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


def serving(home):
    """The round a replica's home names in rounds/CURRENT (written before the replica swaps it in)."""
    current = Path(home) / "rounds" / "CURRENT"
    return current.read_text().strip() if current.exists() else "round-000"


def hub_file(api, repo, path, repo_type="model"):
    try:
        return Path(api.hf_hub_download(repo, path, repo_type=repo_type, local_dir=None)).read_bytes()
    except Exception:
        return None


def hub_flag_ids(api):
    ids = set()
    for path in api.list_repo_files("fleet/flags", repo_type="dataset"):
        if path.startswith("data/") and path.endswith(".parquet"):
            data = Path(api.hf_hub_download("fleet/flags", path, repo_type="dataset")).read_bytes()
            ids |= set(pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist())
    return ids


@pytest.mark.slow
def test_two_replicas_and_a_trainer_one_round_from_both_served_by_both(tmp_path, mnist, monkeypatch):  # noqa: F811
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest's default: offline
    port = two_free_ports()
    env = {**os.environ, "DADC_THRESHOLD": "4", "DADC_PUSH_DELAY": "1", "HF_HOME": str(tmp_path / "hf"),
           **{f"DADC_ROUND_{k.upper()}": str(v) for k, v in TINY.items()},
           "DADC_ROUND_CLEAN_DROP": "1", "DADC_ROUND_ROBUST_DROP": "1"}  # a gate that passes: this is about who serves
    # replicas check the model repo every 30 s or sooner (DADC_FOLLOW_EVERY's default)
    fleet = subprocess.Popen([sys.executable, "scripts/fleet.py", "--home", str(tmp_path / "fleet"),
                              "--port", str(port), "--follow-every", "30", "--trainer-every", "3"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        said = json.loads(fleet.stdout.readline())
        api = HfApi(endpoint=said["hub"], token=TOKEN)
        from gradio_client import Client

        def client(url):
            try:
                return Client(url, verbose=False, headers={"X-Forwarded-For": next_address()})
            except Exception:
                return None
        clients = [wait(lambda u=u: client(u), 180, f"replica {u}", fleet) for u in said["replicas"]]
        flagged = []
        for k, c in enumerate(clients):  # two flags on each replica: the threshold only together
            for i in (2 * k, 2 * k + 1):
                value = canvas_file(tmp_path / f"{i}.png", mnist["test_x"][i], rng=np.random.default_rng(i))
                r = c.predict(value, int(mnist["test_y"][i]), api_name="/flag")
                assert r["saved"] and r["round"] == "round-000"
                flagged.append(r["id"])
        wait(lambda: hub_file(api, "fleet/rounds", "rounds/CURRENT") == b"round-001", 300, "the trainer's round",
             fleet)
        promoted = time.time()
        homes = [Path(h) for h in said["homes"]]
        wait(lambda: all(serving(h) == "round-001" for h in homes), 30,
             "both replicas to serve round-001", fleet)
        followed = time.time() - promoted
        for i, c in enumerate(clients):  # served, not only on disk
            value = canvas_file(tmp_path / f"after{i}.png", mnist["test_x"][10 + i])
            assert c.predict(value, int(mnist["test_y"][10 + i]), api_name="/flag")["round"] == "round-001"
        history = [json.loads(line) for line in hub_file(api, "fleet/rounds", "rounds/history.jsonl").splitlines()]
        [attempt] = [h for h in history if h.get("event") == "attempt"]
        assert attempt["round"] == "round-001" and attempt["counts"]["human eligible"] == 4  # both replicas' flags
        assert not any((h / "rounds" / ".train.lock").exists() for h in homes), "a replica trained"
        wait(lambda: set(flagged) <= hub_flag_ids(api), 30, "every flag on the Hub", fleet)
        print(f"served by both {followed:.1f} s after the test saw the promotion")
        assert followed <= 30
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            assert fleet.wait(90) == 0
        finally:
            fleet.kill()
