"""The flag store: flagged examples and their votes under DADC_HOME/flags, durable and append-only.

flags.py     FlagStore (the one writer and reader of the files), StoreError, human_tensors
index.py     the rows and votes in memory, following the files' tails
layout.py    file names, the row format, the dataset card (card.md)
snapshot.py  what a Hub push reads: a consistent snapshot, the record of what was pushed
adopt.py     replicas restored from the Hub written in (fill_replica, Filled)
"""
from .adopt import Filled, fill_replica
from .flags import FlagStore, StoreError, human_tensors, keepable, png_bytes
from .layout import FIELDS, MAX_SESSION, PULLED, REPLICA_NAME, ROWS, VOTES

__all__ = ["Filled", "fill_replica", "FlagStore", "StoreError", "human_tensors", "keepable", "png_bytes", "FIELDS", "MAX_SESSION", "PULLED", "REPLICA_NAME", "ROWS", "VOTES"]
