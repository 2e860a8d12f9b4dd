"""The dashboard's numbers, computed from a Studio: examples per digit, model error rate and
accuracy per round, the history of attempts, recent fooling examples, and a status text."""
import threading
import time
from collections import Counter

from ..examples import eligible, round_number


REFRESH_S = 3.0  # the counts over all examples are recomputed at most this often, for all visitors


class Counts:
    """The counts over every example (per digit, fooled per round, the gallery...): computed once
    for all visitors, again only when the store changed and at most every REFRESH_S seconds, and
    then in the background while visitors get the last value: a request never scans the store
    (but the very first)."""

    def __init__(self, studio):
        self.studio = studio
        self._lock = threading.Lock()
        self._value, self._version, self._at, self._busy = None, None, 0.0, False

    def get(self):
        version = self.studio.store.version()
        with self._lock:
            if self._value is not None:
                stale = version != self._version and time.monotonic() - self._at >= REFRESH_S
                if stale and not self._busy:
                    self._busy = True
                    threading.Thread(target=self._compute, args=(version,), name="dashboard", daemon=True).start()
                return self._value
        return self._compute(version)

    def _compute(self, version):
        try:
            value = _count(self.studio)
            with self._lock:
                self._value, self._version, self._at = value, version, time.monotonic()
            return value
        finally:
            self._busy = False


def _count(studio):
    rows = studio.store.examples()
    verified = [e for e in rows if e.verified(studio.cfg.votes)]
    return {"per_digit": Counter((e.label, "collected") for e in rows) + Counter((e.label, "verified") for e in verified),
            "fooled_by": Counter(e.session for e in rows if e.fooled),
            "verified_by": Counter(e.session for e in verified if e.fooled),
            "rounds_by": _rounds_by(rows),
            "fooled": Counter(e.round for e in rows if e.fooled),
            "fooled_verified": Counter(e.round for e in verified if e.fooled),
            "collected": len(rows), "usable": len(eligible(rows, studio.cfg)),
            "gallery": [(str(e.canvas_path), f"{e.label}, not {e.prediction} (round {e.round})")
                        for e in rows if e.fooled][-12:][::-1]}


def _rounds_by(rows):
    out = {}
    for e in rows:
        if e.fooled:
            out.setdefault(e.session, set()).add(e.round)
    return out


LEADERS = 20  # rows of the leaderboard


def leaderboard(studio, c):
    """The people who fooled the model most, by examples others verified, then by examples flagged.
    Logged-in visitors by username, anonymous ones only under a nickname they chose (opt-in)."""
    names = studio.nicknames.all()
    attempts = studio.attempts.by_visitor()
    rows = []
    for who in sorted(c["fooled_by"], key=lambda w: (-c["verified_by"][w], -c["fooled_by"][w], w)):
        name = names.get(who) or (None if who.startswith(("anon-", "import:", "simulate")) else who)
        if name is None:
            continue
        tried = attempts.get(who)
        rows.append([name, c["fooled_by"][who], c["verified_by"][who],
                     f"{c['verified_by'][who] / tried:.0%}" if tried else "",
                     ", ".join(str(r) for r in sorted(c["rounds_by"].get(who, ())))])
        if len(rows) == LEADERS:
            break
    return rows


def matrix(studio):
    """Each promoted round's accuracy on the held-out examples that fooled each earlier round, as
    plot rows {"round", "fooled", "accuracy", "n"} (from the rounds' metrics)."""
    out = []
    for name in studio.registry.names():
        for fooled, cell in (studio.registry.metrics(name).get("matrix_row") or {}).items():
            if isinstance(cell, dict) and isinstance(cell.get("acc"), (int, float)):
                out.append({"round": name, "fooled": f"fooled {fooled}", "accuracy": cell["acc"], "n": cell.get("n")})
    return out


def numbers(studio, admin):
    """The dashboard's numbers for a Studio: plain values, laid out by the page. Repo ids
    and error texts only for admins: the public sees that something failed, not a stack trace."""
    c = studio.counts.get()
    attempts = studio.attempts.counts()
    names = studio.registry.names()
    mer, acc = [], []
    for name in names:
        n = round_number(name)
        if attempts.get(n):
            mer.append({"round": n, "kind": "MER (fooled / attempts)", "rate": c["fooled"][n] / attempts[n]})
            mer.append({"round": n, "kind": "verified MER", "rate": c["fooled_verified"][n] / attempts[n]})
        m = studio.registry.metrics(name)
        for key, label in (("clean_acc", "clean"), ("robust_acc", "PGD robust"), ("human_acc", "human hold-out")):
            if isinstance(m.get(key), (int, float)):
                acc.append({"round": n, "metric": label, "accuracy": m[key]})
    return {"status": _status(studio, c["collected"], c["usable"], admin),
            "digits": [{"digit": str(d), "kind": k, "examples": c["per_digit"][(d, k)]}
                       for d in range(10) for k in ("collected", "verified")],
            "mer": mer, "accuracy": acc, "history": _history(studio, admin), "gallery": c["gallery"],
            "leaders": leaderboard(studio, c), "matrix": matrix(studio),
            "rounds": names, "serving": studio.predictor.round, "running": studio.job.running, "admin": admin}


def _status(studio, collected, usable, admin):
    new, more = studio.job.pending()
    st = studio.job.status
    lines = [f"Serving {studio.predictor.round} · {collected} examples collected "
             f"({usable} usable{' — verified only' if studio.cfg.verified_only else ''}) · "
             f"{new} new, {more} more start the next round (threshold {studio.job.threshold})"]
    if st.state == "running":
        lines.append(f"Retraining: {st.stage}" + (f" {st.done}/{st.total} steps" if st.total else ""))
    elif st.stage:
        lines.append(f"Last round: {st.stage if admin or not st.stage.startswith('failed') else 'failed'}")
    if studio.restoring:
        lines.append("Restoring flags and rounds from the Hub: serving meanwhile, and no round starts until it is done")
    if studio.sync is None:
        lines.append("Hub: not configured (HF_TOKEN and DADC_DATASET_REPO): flags are kept locally")
    elif admin:
        s = studio.sync.status()
        lines.append(f"Hub: {s['repo']} · last push {s['last_push'] or 'not yet'} · {s['pending']} pending"
                     + (f" · {s['last_error']}" if s["last_error"] else "")
                     + (f" · {studio.sync.skipped_rows} bad Hub rows skipped at restore (see the log)"
                        if studio.sync.skipped_rows else ""))
    else:
        s = studio.sync.status()
        lines.append(f"Hub: last push {s['last_push'] or 'not yet'} · {s['pending']} pending"
                     + (f" · {s['problem']}; retried" if s["problem"] else ""))
    return "\n\n".join(lines)

def _history(studio, admin):
    """Every attempt and rollback, newest first, as table rows (a failure's text for admins only)."""
    out = []
    for h in reversed(studio.registry.history()):
        if h.get("event") == "attempt":
            c = h.get("candidate", {})
            reasons = [r if admin or not r.startswith("the round failed") else "the round failed"
                       for r in h.get("reasons", [])]
            out.append([h["time"], f"attempt {h.get('attempt', '?')} on {h.get('base', '?')}",
                        f"promoted {h['round']}" if h.get("passed") else "rejected",
                        "; ".join(reasons) or "passed the gate",
                        _pct(c.get("clean_acc")), _pct(c.get("robust_acc")), h.get("seconds")])
        elif h.get("event") == "rollback":
            out.append([h["time"], "rollback", f"{h['from']} -> {h['to']}", h.get("why", ""), "", "", ""])
    return out


def _pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else ""
