"""The trainer role (`python -m dadc trainer`): rounds trained apart from serving, where the GPU
is. One pass (`--once`: a Hugging Face Job, cron):

  1. the model repo's rounds (CURRENT, the history, the CURRENT round) into DADC_HOME/rounds;
  2. every replica's new flags and votes from the dataset repo into DADC_HOME/flags (mirror.py);
  3. with DADC_THRESHOLD new eligible examples since the last attempt on record, one round run
     exactly as the app runs it (rounds/retrain.RetrainJob.run_round: eligibility, bounded data,
     the gate, the history entry);
  4. the attempt committed to the model repo as a compare-and-swap (model_repo.py): a promoted
     round with its model card, CURRENT and the history in one commit, then its tag; a rejected
     one as a line of history.

DADC_HOME is a working copy: what matters comes from the Hub again at each pass, and the commit is
the promotion. So a trainer killed mid-round and restarted trains that round again, nothing is
half-promoted, and of two trainers racing only the first commit promotes round-00N: the other
reads the repo again and records its attempt as not promoted. Without --once, the CLI runs a pass
every --every seconds.
"""
import json
from pathlib import Path

from huggingface_hub import HfApi

from .. import files
from ..config import RoundConfig
from ..examples import eligible, round_number
from ..model import checkpoint
from ..model import mnist as data
from ..rounds.gate import REFERENCE
from ..rounds.registry import ROUND0, Predictor, Registry
from ..rounds.retrain import TRAIN_LOCK, RetrainJob
from ..store import FlagStore
from . import mirror, model_repo
from .sync import check_repo_id


class Trainer:
    """One trainer on its own DADC_HOME (the working copy), for the settings' two repos."""

    def __init__(self, settings, cfg=None, on_stage=None, log=lambda m: None, round0=ROUND0):
        if not (settings.hf_token and settings.dataset_repo and settings.model_repo):
            raise ValueError("the trainer needs HF_TOKEN, DADC_DATASET_REPO (the flags it reads) and "
                             "DADC_MODEL_REPO (where it promotes rounds)")
        check_repo_id(settings.dataset_repo)
        self.repo = check_repo_id(settings.model_repo, "DADC_MODEL_REPO")
        self.settings, self.on_stage, self.log = settings, on_stage, log
        self.cfg = cfg or RoundConfig.from_env()
        self.api = HfApi(token=settings.hf_token)
        self.store = FlagStore(settings.home, admins=settings.admins)
        self.registry = Registry(settings.home, round0)
        self.head = None  # the model repo as last read (model_repo.Head)

    def pull(self):
        """The model repo's rounds into the working copy; returns its Head."""
        with self.store.hub.scratch() as tmp:
            self.head = model_repo.pull(self.api, self.repo, self.registry, tmp)
        return self.head

    def once(self, force=False):
        """One pass: pull, train if due (or `force`), commit. Returns a summary (plain values)."""
        with files.try_locked(self.registry.root / TRAIN_LOCK) as held:
            if held is None:
                raise RuntimeError(f"a round is already training on DADC_HOME {self.settings.home}")
            self.pull()
            self.log(f"model repo {self.repo}: serving {self.head.current or REFERENCE}")
            filled = mirror.pull_flags(self.api, self.settings.dataset_repo, self.store, self.settings.max_flags)
            self.log(f"dataset repo: {filled.added} new examples, {filled.votes} new votes"
                     + (f", {filled.skipped_rows} bad rows skipped" if filled.skipped_rows else ""))
            job = RetrainJob(self.registry, Predictor(self.registry), self.store, self.settings.threshold, self.cfg,
                             mnist=lambda: data.fetch(self.settings.home, log=self.log), on_stage=self.on_stage,
                             finish=self.finish)
            new, more = job.pending()
            usable = eligible(self.store.examples(), self.cfg)
            out = {"trained": False, "new": new, "threshold": job.threshold, "examples": len(usable),
                   "pulled": {"examples": filled.added, "votes": filled.votes, "skipped": filled.skipped_rows}}
            if (more and not force) or not any(not e.held_out for e in usable):
                return {**out, "serving": self.registry.current(),
                        "why": f"{more} more new eligible examples start a round" if more else "nothing to learn"}
            entry = job.run_round(len(usable))
        return {**out, "trained": True, "round": entry.get("round"), "passed": entry["passed"],
                "reasons": entry["reasons"], "seconds": entry["seconds"], "serving": self.registry.current()}

    def finish(self, entry, candidate, net_config, metrics, counts):
        """RetrainJob's finish: the attempt onto the model repo, compare-and-swap. A passed round is
        promoted as the round after the repo's newest, unless the repo's rounds or CURRENT changed
        while it trained (another trainer, an admin's rollback): then it was gated against a round
        that no longer serves, and is recorded as not promoted. Returns the entry as recorded."""
        lost = None
        for _ in range(model_repo.TRIES):
            head = self.head
            promote = metrics is not None and lost is None
            record = {**entry, "round": head.next_round()} if promote else entry
            history = model_repo.history_with(head, record)
            with self.store.hub.scratch() as tmp:
                ops = model_repo.state_ops(record["round"] if promote else None, history)
                folder = Path(tmp) / record["round"] if promote else None
                if promote:
                    checkpoint.save(candidate, folder, net_config, metrics)
                    ops = model_repo.round_ops(folder, counts, self.settings.dataset_repo) + ops
                what = f"Promote {record['round']}" if promote else f"Attempt {entry.get('attempt')}: not promoted"
                try:
                    info = model_repo.commit(self.api, self.repo, head, ops, what)
                except model_repo.Moved:
                    now = self.pull()
                    lost = self._lost(head, now) if promote else lost
                    if lost is not None:
                        entry = {**entry, "passed": False, "reasons": [lost]}
                    continue
                self.registry.mirror([folder] if promote else [], record["round"] if promote else None, history)
            if promote:
                self._tag(record["round"], info.oid)
            self.head = model_repo.Head(info.oid, head.rounds | ({record["round"]} if promote else set()),
                                        record["round"] if promote else head.current, history)
            return json.loads(history.splitlines()[-1])
        raise RuntimeError(f"{self.repo} kept moving: the attempt was not recorded after {model_repo.TRIES} tries")

    @staticmethod
    def _lost(before, now):
        """Why a passed round may not be promoted on `now`, or None if only the history moved."""
        if now.rounds == before.rounds and now.current == before.current:
            return None
        newest = max(now.rounds, default=REFERENCE, key=round_number)
        return (f"not promoted: the model repo changed while this round trained (now serving "
                f"{now.current or REFERENCE}, newest {newest}): another trainer promoted a round or an admin rolled back")

    def _tag(self, name, commit):
        try:
            self.api.create_tag(self.repo, tag=name, revision=commit, repo_type="model")
        except Exception as e:  # the commit is the promotion; a tag is a bookmark
            self.log(f"could not tag {name}: {type(e).__name__}")
