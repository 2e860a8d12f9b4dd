"""The dashboard's numbers, computed from the parts of a Studio it is given (Parts, never the
Studio): examples per digit, model error rate and accuracy per round, the history of attempts,
recent fooling examples, and a status text."""
import threading
import time
from collections import Counter
from dataclasses import dataclass

from ..config import RoundConfig
from ..examples import eligible, round_number
from ..rounds.gate import REFERENCE
from ..rounds.registry import Predictor, Registry
from ..rounds.retrain import RetrainJob
from ..store import FlagStore
from .visitors import Attempts, Nicknames


REFRESH_S = 1.0  # the counts over all examples are recomputed at most this often, for all visitors
WAIT_S = 2.0     # how long a request waits for counts that include the latest change


class Counts:
    """The counts over every example (per digit, fooled per round, the gallery...): computed once
    for all visitors, in the background, again only when the store changed and at most every
    REFRESH_S seconds. A request that finds them older than the store waits (up to WAIT_S) for
    the scan that catches up: a visitor who flags and opens the dashboard sees their flag counted,
    and a flood of flags still costs one scan a REFRESH_S, however many visitors look."""

    def __init__(self, store: FlagStore, cfg: RoundConfig):
        self.store, self.cfg = store, cfg
        self._lock = threading.Lock()
        self._value, self._version, self._at = None, None, 0.0
        self._scan = None  # the background scan under way (a Thread), or None

    def get(self):
        version = self.store.version()
        with self._lock:
            if self._value is not None and version == self._version:
                return self._value
            first = self._value is None
            if self._scan is None:
                self._scan = threading.Thread(target=self._compute, name="dashboard", daemon=True)
                self._scan.start()
            scan = self._scan
        scan.join(None if first else WAIT_S)  # the very first is waited for, however long
        if self._value is None:  # the scan failed: its traceback is in the log
            raise RuntimeError("the dashboard's counts could not be computed")
        return self._value

    def _compute(self):
        try:
            time.sleep(max(0.0, self._at + REFRESH_S - time.monotonic()))  # at most one scan a REFRESH_S
            version = self.store.version()  # read before the scan: a change during it makes the next one
            value = _count(self.store, self.cfg)
            with self._lock:
                self._value, self._version, self._at = value, version, time.monotonic()
        finally:
            with self._lock:
                self._scan = None


@dataclass(frozen=True)
class Parts:
    """What the dashboard reads, handed over by the Studio once: the objects that own the numbers
    (whether the Hub restore is running comes with each request, to numbers())."""
    counts: Counts
    cfg: RoundConfig
    registry: Registry
    predictor: Predictor
    job: RetrainJob
    sync: object  # hub.sync.HubSync (a sibling package: not imported here), or None when local only
    attempts: Attempts
    nicknames: Nicknames


def _count(store, cfg):
    rows = store.examples()
    verified = [e for e in rows if e.verified(cfg.votes)]
    return {"per_digit": Counter((e.label, "collected") for e in rows) + Counter((e.label, "verified") for e in verified),
            "fooled_by": Counter(e.visitor for e in rows if e.fooled),
            "verified_by": Counter(e.visitor for e in verified if e.fooled),
            "rounds_by": _rounds_by(rows),
            "fooled": Counter(e.round for e in rows if e.fooled),
            "fooled_verified": Counter(e.round for e in verified if e.fooled),
            "collected": len(rows), "usable": len(eligible(rows, cfg)),
            "gallery": [(str(e.canvas_path), f"{e.label}, not {e.prediction} (round {e.round})")
                        for e in rows if e.fooled][-12:][::-1]}


def _rounds_by(rows):
    out = {}
    for e in rows:
        if e.fooled:
            out.setdefault(e.visitor, set()).add(e.round)
    return out


LEADERS = 20  # rows of the leaderboard


def leaderboard(c, nicknames, attempts):
    """The people who fooled the model most, by examples others verified, then by examples flagged
    (c: Counts.get()). Logged-in visitors by username, anonymous ones only under a nickname they
    chose (opt-in)."""
    names, tried_by = nicknames.all(), attempts.by_visitor()
    rows = []
    for who in sorted(c["fooled_by"], key=lambda w: (-c["verified_by"][w], -c["fooled_by"][w], w)):
        name = names.get(who) or (None if who.startswith(("anon-", "import:")) or who == "simulate" else who)
        if name is None:
            continue
        tried = tried_by.get(who)
        rows.append([name, c["fooled_by"][who], c["verified_by"][who],
                     f"{c['verified_by'][who] / tried:.0%}" if tried else "",
                     ", ".join(str(r) for r in sorted(c["rounds_by"].get(who, ())))])
        if len(rows) == LEADERS:
            break
    return rows


def matrix(registry):
    """Each promoted round's accuracy on the held-out examples that fooled each earlier round, as
    plot rows {"round", "fooled", "accuracy", "n"} (from the rounds' metrics)."""
    out = []
    for name in registry.names():
        for fooled, cell in (registry.metrics(name).get("matrix_row") or {}).items():
            if isinstance(cell, dict) and isinstance(cell.get("acc"), (int, float)):
                out.append({"round": name, "fooled": f"fooled {fooled}", "accuracy": cell["acc"], "n": cell.get("n")})
    return out


def numbers(parts, admin, restoring=False):
    """The dashboard's numbers from a Studio's Parts (restoring: the Hub restore is running): plain
    values, laid out by the page. Repo ids and error texts only for admins: the public sees that
    something failed, not a stack trace."""
    c = parts.counts.get()
    attempts = parts.attempts.counts()
    names = parts.registry.names()
    mer = []
    for name in names:
        n = round_number(name)
        if attempts.get(n):
            mer.append({"round": n, "kind": "MER (fooled / attempts)", "rate": c["fooled"][n] / attempts[n]})
            mer.append({"round": n, "kind": "verified MER", "rate": c["fooled_verified"][n] / attempts[n]})
    acc, protocol = accuracy(parts.registry)
    return {"status": _status(parts, c["collected"], c["usable"], admin, restoring),
            "digits": [{"digit": str(d), "kind": k, "examples": c["per_digit"][(d, k)]}
                       for d in range(10) for k in ("collected", "verified")],
            "mer": mer, "accuracy": acc, "protocol": protocol, "history": _history(parts.registry, admin),
            "gallery": c["gallery"], "leaders": leaderboard(c, parts.nicknames, parts.attempts),
            "matrix": matrix(parts.registry), "rounds": names, "serving": parts.predictor.round,
            "running": parts.job.running, "admin": admin}


def accuracy(registry):
    """(plot rows {"round", "metric", "accuracy"}, the protocol in words): clean and PGD accuracy
    per round, every round measured the same way (a series that mixed protocols would make rounds
    look less robust than round-000 only for being attacked differently). The gate's protocol
    (registry.gate_metrics) once a gate ran; before that, round-000's own evaluation."""
    settings, measured = registry.gate_metrics()
    if isinstance(settings, dict) and {"robust_steps", "eps", "val_n", "robust_n"} <= settings.keys():
        pgd = f"PGD-{settings['robust_steps']}, ε {settings['eps']:g}"
        where = (f"The gate's protocol for every round: MNIST's validation slice (the last {settings['val_n']:,} "
                 f"training images), {pgd} on its first {settings['robust_n']:,}.")
        return [{"round": round_number(n), "metric": label, "accuracy": v} for n, pair in measured.items()
                for label, v in zip(("clean", pgd), pair)], where
    m = registry.metrics(REFERENCE)
    e = m.get("eval") or {}
    numbers_ = [m.get("clean_acc"), m.get("robust_acc"), e.get("n"), e.get("steps"), e.get("eps")]
    if not all(isinstance(v, (int, float)) for v in numbers_):
        return [], "No round has been measured yet."
    pgd = f"PGD-{e['steps']}, ε {e['eps']:g}"
    where = (f"{REFERENCE}'s own evaluation: the first {e['n']:,} MNIST test images, {pgd}; every round "
             "is shown with the gate's protocol once a gate has run.")
    return [{"round": 0, "metric": "clean", "accuracy": m["clean_acc"]},
            {"round": 0, "metric": pgd, "accuracy": m["robust_acc"]}], where


def _status(parts, collected, usable, admin, restoring):
    job, sync = parts.job, parts.sync
    new, more = job.pending()
    st = job.status
    lines = [f"Serving {parts.predictor.round} · {collected} example{'s' * (collected != 1)} collected "
             f"({usable} usable{' — verified only' if parts.cfg.verified_only else ''}) · "
             + (f"{new} new, {more} more start the next round (threshold {job.threshold})" if job.enabled
                else "the trainer counts every replica's")]
    if st.state == "running":
        lines.append(f"Retraining: {st.stage}" + (f" {st.done}/{st.total} steps" if st.total else ""))
    elif st.stage:
        lines.append(f"Last round: {st.stage if admin or not st.stage.startswith('failed') else 'failed'}")
    s = sync.status() if sync is not None else {}  # once: it reads the store's unpushed tail
    follow = s.get("follow")
    if follow is not None:
        lines.append(f"Rounds: trained by the trainer (`python -m dadc trainer`), promoted on the model repo · "
                     f"last check {follow['last_check'] or 'not yet'} (every {follow['every']:g} s) · "
                     f"{follow['changes']} change{'s' * (follow['changes'] != 1)} followed")
    else:
        lines.append("Rounds: trained by this app")
    if restoring:
        lines.append("Restoring flags and rounds from the Hub: serving meanwhile, and no round starts until it is done")
    if sync is None:
        lines.append("Hub: not configured (HF_TOKEN and DADC_DATASET_REPO): flags are kept locally")
    elif admin:
        lines.append(f"Hub: {s['repo']} · last push {s['last_push'] or 'not yet'} · {s['pending']} pending"
                     + (f" · {s['last_error']}" if s["last_error"] else "")
                     + (f" · {sync.skipped_rows} bad Hub rows skipped at restore (see the log)"
                        if sync.skipped_rows else ""))
    else:
        lines.append(f"Hub: last push {s['last_push'] or 'not yet'} · {s['pending']} pending"
                     + (f" · {s['problem']}; retried" if s["problem"] else ""))
    return "\n\n".join(lines)


def _history(registry, admin):
    """Every attempt and rollback, newest first, as table rows (a failure's text for admins only).
    The accuracies are the candidate's on the gate's validation slice: what its reasons speak of,
    and what the accuracy plot shows for every round."""
    out = []
    for h in reversed(registry.history()):
        if h.get("event") == "attempt":
            c = h.get("candidate", {})
            reasons = [r if admin or not r.startswith("the round failed") else "the round failed"
                       for r in h.get("reasons", [])]
            out.append([h["time"], f"attempt {h.get('attempt', '?')} on {h.get('base', '?')}",
                        f"promoted {h['round']}" if h.get("passed") else "rejected",
                        "; ".join(reasons) or "passed the gate",
                        _pct(c.get("val_clean_acc")), _pct(c.get("val_robust_acc")), h.get("seconds")])
        elif h.get("event") == "rollback":
            out.append([h["time"], "rollback", f"{h['from']} -> {h['to']}", h.get("why", ""), "", "", ""])
    return out


def _pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else ""
