"""The dashboard's numbers, computed from a Studio: examples per digit, model error rate and
accuracy per round, the history of attempts, recent fooling examples, and a status text."""
from collections import Counter

from .examples import eligible, round_number


def numbers(studio, admin):
    """The dashboard's numbers for a Studio: plain values, laid out by the page. Repo ids
    and error texts only for admins: the public sees that something failed, not a stack trace."""
    rows = studio.store.examples()
    verified = [e for e in rows if e.verified(studio.cfg.votes)]
    per_digit = Counter((e.label, "collected") for e in rows) + Counter((e.label, "verified") for e in verified)
    attempts = studio.attempts.counts()
    fooled = Counter(e.round for e in rows if e.fooled)
    fooled_verified = Counter(e.round for e in verified if e.fooled)
    names = studio.registry.names()
    mer, acc = [], []
    for name in names:
        n = round_number(name)
        if attempts.get(n):
            mer.append({"round": n, "kind": "MER (fooled / attempts)", "rate": fooled[n] / attempts[n]})
            mer.append({"round": n, "kind": "verified MER", "rate": fooled_verified[n] / attempts[n]})
        m = studio.registry.metrics(name)
        for key, label in (("clean_acc", "clean"), ("robust_acc", "PGD robust"), ("human_acc", "human hold-out")):
            if isinstance(m.get(key), (int, float)):
                acc.append({"round": n, "metric": label, "accuracy": m[key]})
    return {"status": _status(studio, len(rows), len(eligible(rows, studio.cfg)), admin),
            "digits": [{"digit": str(d), "kind": k, "examples": per_digit[(d, k)]}
                       for d in range(10) for k in ("collected", "verified")],
            "mer": mer, "accuracy": acc, "history": _history(studio, admin),
            "gallery": [(str(e.canvas_path), f"{e.label}, not {e.prediction} (round {e.round})")
                        for e in rows if e.fooled][-12:][::-1],
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
