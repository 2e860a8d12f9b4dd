"""The rounds on disk (Registry) and the model serving requests (Predictor).

    DADC_HOME/rounds/round-000/ ...   checkpoint dirs (model.safetensors, config.json, metrics.json)
    DADC_HOME/rounds/CURRENT          the name of the round being served (rewritten atomically)
    DADC_HOME/rounds/history.jsonl    every retraining attempt and rollback, append-only: why it passed or failed

The Registry alone writes these; round-000 is copied from models/round-000 on first start.
"""
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch

from ..model import checkpoint
from .. import files
from ..examples import ROUND_NAME, round_name, round_number
from .gate import REFERENCE

ROUND0 = Path(__file__).resolve().parents[2] / "models" / "round-000"  # the shipped round-000
ROUND_FILES = ("model.safetensors", "config.json", "metrics.json")  # never a pickle


class Registry:
    """The rounds under DADC_HOME/rounds, round-000 copied from models/ (`round0`) on first start."""

    def __init__(self, home, round0=ROUND0):
        self.root = Path(home) / "rounds"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if not self.names():
            if not (Path(round0) / "model.safetensors").exists():
                raise FileNotFoundError(f"no round-000 to start from: {round0} has no model.safetensors")
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".seed."))
            for f in ROUND_FILES:
                if (Path(round0) / f).exists():
                    shutil.copy2(Path(round0) / f, tmp / f)
            self._move_in(tmp, "round-000")
        if self.current() not in self.names():
            files.write_atomic(self.root / "CURRENT", self.names()[-1])
        files.repair(self.root / "history.jsonl")  # a crash mid-record left a torn line

    def _move_in(self, src, name):
        os.replace(src, self.root / name)  # a whole directory at once: never half a round
        files.fsync_dir(self.root)

    def names(self):
        return sorted((p.name for p in self.root.iterdir()
                       if p.is_dir() and ROUND_NAME.fullmatch(p.name) and (p / "model.safetensors").exists()),
                      key=round_number)

    def current(self):
        try:
            return (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            names = self.names()
            return names[-1] if names else None

    def path(self, name):
        if not ROUND_NAME.fullmatch(str(name)) or name not in self.names():
            raise ValueError(f"no round named {name!r}; rounds: {', '.join(self.names())}")
        return self.root / name

    def load(self, name):
        return checkpoint.load(self.path(name))

    def metrics(self, name):
        try:
            return json.loads((self.path(name) / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    def gate_metrics(self):
        """(settings, {round name: (clean, PGD)}): each round's accuracy as the gate measures it
        (gate.measure: the MNIST validation slice; its `settings` are gate.reference_settings), one
        protocol for every round: the one the newest promoted round was gated with (before any, the
        newest attempt's). Round-000 is never gated: its numbers are the reference the gate measured
        it by (kept in each later round's metrics and in the history). A round measured under other
        settings is left out. (None, {}) before any gate ran."""
        promoted = [(n, self.metrics(n)) for n in self.names() if n != REFERENCE]
        refs = [m["reference"] for _, m in promoted if isinstance(m.get("reference"), dict)]
        tried = [h["reference"] for h in self.history() if isinstance(h.get("reference"), dict)]
        if not refs + tried:
            return None, {}
        settings = (refs or tried)[-1].get("settings")
        out = {}
        for ref in refs + tried:  # any of them: the same measurement of the same round-000
            if ref.get("settings") == settings:
                out[REFERENCE] = (ref.get("val_clean_acc"), ref.get("val_robust_acc"))
        for name, m in promoted:
            if isinstance(m.get("reference"), dict) and m["reference"].get("settings") == settings:
                out[name] = (m.get("val_clean_acc"), m.get("val_robust_acc"))
        return settings, {n: v for n, v in sorted(out.items(), key=lambda kv: round_number(kv[0]))
                          if all(isinstance(x, (int, float)) for x in v)}

    def has_trained(self):
        """True once this home has rounds besides round-000 (its own lineage)."""
        return any(n != "round-000" for n in self.names())

    def promote(self, model, config, metrics):
        """Save the next round and make it current. Returns its name."""
        with self._lock:
            name = round_name(max(round_number(n) for n in self.names()) + 1)
            checkpoint.save(model, self.root / name, config, metrics)
            files.write_atomic(self.root / "CURRENT", name)
        return name

    def adopt_restored(self, folders, current=None, history=None):
        """Take in what was downloaded from the Hub into a home that has trained nothing of its own:
        the round folders (round-NNN/ with at least the weights and config) whose names no round
        here has, only their round files; the history (its lines re-written as JSON objects, so its
        "claimed" counters come back and nothing trains again at boot); and CURRENT, if it names a
        round that is here. The same round then serves as before the disk was lost (the newest
        adopted one if the Hub has no CURRENT). Returns the names adopted."""
        if self.has_trained() or self.history():
            return []  # this home has its own lineage: keep it as it is
        adopted = []
        with self._lock:
            for src in map(Path, folders):
                ok = ROUND_NAME.fullmatch(src.name) and all(
                    (src / f).is_file() and not (src / f).is_symlink() for f in ROUND_FILES[:2])
                if not ok or (self.root / src.name).exists():
                    continue
                tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".restore."))
                for f in ROUND_FILES:
                    if (src / f).is_file() and not (src / f).is_symlink():
                        os.replace(src / f, tmp / f)
                self._move_in(tmp, src.name)
                adopted.append(src.name)
            rows = [r for r in files.read_jsonl(history) if isinstance(r.get("event"), str)] if history else []
            if rows:
                text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)  # as record() writes
                files.write_atomic(self.root / "history.jsonl", text)
            current = current.read_text().strip() if current and Path(current).is_file() else None
            if current not in self.names():
                current = max(adopted, key=round_number) if adopted else None
            if current:
                files.write_atomic(self.root / "CURRENT", current)
        return adopted

    def mirror(self, folders, current, history):
        """Follow the record of rounds kept elsewhere (the model repo: a replica with
        DADC_TRAINER=remote, and the trainer's working copy). The round folders given come in; a
        round here of the same name but other weights (trained before this home followed) is moved
        aside to rounds/.replaced/, never deleted. The history becomes `history` (bytes, the
        record's); CURRENT becomes `current` if that round is here and loads. Returns CURRENT. A
        round that does not load raises CheckpointError before anything of it comes in."""
        with self._lock:
            for src in map(Path, folders):
                if not (ROUND_NAME.fullmatch(src.name) and all((src / f).is_file() for f in ROUND_FILES[:2])):
                    continue
                mine = self.root / src.name
                if mine.exists() and (mine / ROUND_FILES[0]).read_bytes() == (src / ROUND_FILES[0]).read_bytes():
                    continue
                checkpoint.load(src)  # CheckpointError: a round that does not load never comes in
                if mine.exists():
                    aside = self.root / ".replaced" / f"{src.name}.{files.utc_now().replace(':', '')}"
                    aside.parent.mkdir(exist_ok=True)
                    os.replace(mine, aside)
                tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".mirror."))
                fds = [os.open(tmp, os.O_RDONLY)]
                try:
                    for f in ROUND_FILES:
                        if (src / f).is_file() and not (src / f).is_symlink():
                            fds.append(files.place(tmp / f, (src / f).read_bytes()))
                    files.fsync_all(fds)  # the files are durable before the round is named
                finally:
                    for fd in fds:
                        os.close(fd)
                self._move_in(tmp, src.name)
            if history is not None:
                files.write_atomic(self.root / "history.jsonl", history)
        named = (self.root / "CURRENT").read_text().strip() if (self.root / "CURRENT").exists() else None
        if current in self.names() and current != named:
            self.load(current)  # CURRENT never names a round the next start could not serve
            files.write_atomic(self.root / "CURRENT", current)
        return self.current()

    def state(self):
        """{path in the model repo: bytes} of what, besides the round folders, a fresh disk needs
        to serve the same round with the same history: CURRENT and history.jsonl."""
        out = {}
        for name in ("CURRENT", "history.jsonl"):
            try:
                out[f"rounds/{name}"] = (self.root / name).read_bytes()
            except FileNotFoundError:
                pass
        return out

    def rollback(self, name, why="rollback"):
        """Serve an earlier (or any existing) round again. The rounds after it stay on record.
        The round must load: CURRENT never names a round the next start could not serve."""
        self.load(name)  # raises ValueError (no such round) or CheckpointError (unreadable)
        with self._lock:
            before = self.current()
            files.write_atomic(self.root / "CURRENT", name)
        self.record({"event": "rollback", "from": before, "to": name, "why": why})
        return name

    def record(self, entry):
        """Append one event (an attempt, a rollback...) to the history, stamped with the time."""
        entry = {"time": files.utc_now(), **entry}
        files.append_line(self.root / "history.jsonl", entry)
        return entry

    def history(self):
        return files.read_jsonl(self.root / "history.jsonl")


class Predictor:
    """The serving model. swap() replaces (name, model) in one assignment, so a request that already
    took the old pair finishes on it and the next one gets the new one: no lock on the hot path."""

    def __init__(self, registry):
        self.registry = registry
        self._local = threading.local()
        self.swap(self._last_good(registry))

    @staticmethod
    def _last_good(registry):
        """CURRENT if it loads; else the newest earlier round that does (made current, and recorded
        why), so that one corrupt round on disk never keeps the app from starting."""
        current = registry.current()
        candidates = [current] + [n for n in reversed(registry.names()) if round_number(n) < round_number(current)]
        for name in candidates:
            try:
                registry.load(name)
            except checkpoint.CheckpointError as e:
                registry.record({"event": "unreadable", "round": name, "why": str(e)})
                continue
            if name != current:
                registry.rollback(name, why=f"{current} is unreadable")
            return name
        raise checkpoint.CheckpointError(f"no round under {registry.root} can be loaded")

    def swap(self, name):
        model, _, _ = self.registry.load(name)
        self.serving = (name, model.eval())
        return name

    @property
    def round(self):
        return self.serving[0]

    def probs(self, x28):
        """(round name, 10 probabilities) for one float [28, 28] image in [0, 1]."""
        if not getattr(self._local, "ready", False):
            # one thread per request: torch's 2-thread pool only adds waits for a 28x28 image
            # (60 ms instead of 0.2 ms when the cores are busy); this sets it for this thread and
            # for threads started after it (an in-thread round too), not for those already running
            torch.set_num_threads(1)
            self._local.ready = True
        name, model = self.serving
        with torch.inference_mode():
            logits = model(torch.as_tensor(x28, dtype=torch.float32).reshape(1, 1, 28, 28))
            return name, torch.softmax(logits.float(), 1)[0].numpy()
