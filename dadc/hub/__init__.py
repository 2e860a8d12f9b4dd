"""The Hugging Face Hub as the studio's off-site copy: flags and votes to a dataset repo, rounds to
a model repo, and back on a fresh home. Rows that come down from the Hub are untrusted (rows.py).

sync.py        HubSync: the background push (a CommitScheduler) and the restore at start
push.py        one push of this replica's new flags and votes as parquet shards
restore.py     flags and rounds back from the Hub into a home that lacks them
layout.py      the dataset repo's layout: shards, their `datasets` features, the card
rows.py        check each downloaded row before the store adopts it
migrate.py     `python -m dadc migrate`: a repo of the earlier layout into shards
model_card.py  the README.md pushed with each round
"""
from .sync import HubStatus, HubSync, HubSyncError

__all__ = ["HubStatus", "HubSync", "HubSyncError"]
