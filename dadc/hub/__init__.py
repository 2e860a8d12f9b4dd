"""The Hugging Face Hub as the studio's off-site copy and shared store: flags and votes to a dataset
repo, rounds to a model repo, and back on a fresh home; with several replicas, a trainer that reads
every replica's flags and promotes rounds that the replicas follow. Rows that come down from the
Hub are untrusted (rows.py).

sync.py        HubSync: the background push (a CommitScheduler) and the restore at start
push.py        one push of this replica's new flags and votes as parquet shards
restore.py     flags and rounds back from the Hub into a home that lacks them
layout.py      the dataset repo's layout: shards, their `datasets` features, the card
rows.py        check each downloaded row before the store adopts it
migrate.py     `python -m dadc migrate`: a repo of the earlier layout into shards
model_card.py  the README.md pushed with each round
model_repo.py  the model repo as the one record of rounds: read, pull, compare-and-swap commits, rollback
follow.py      Follower: a replica (DADC_TRAINER=remote) keeps serving the model repo's CURRENT
mirror.py      the trainer's working copy of every replica's flags, pulled incrementally
trainer.py     Trainer: `python -m dadc trainer`, rounds apart from serving
"""
from .sync import HubStatus, HubSync, HubSyncError

__all__ = ["HubStatus", "HubSync", "HubSyncError"]
