"""The Hub dataset's layout, made for `datasets`: parquet shards with the images embedded.

    README.md                          the dataset card (CARD): its `configs` tell `datasets` the files
    data/<replica>/<n>.parquet         flags, rows n, n+1, ... of that replica's metadata.jsonl
    votes/<replica>/<n>.parquet        votes, rows n, ... of its votes.jsonl

A push adds one shard per kind with the rows new since the last push (more than one only for a
backlog over SHARD_BYTES). A shard is named by the number of its first row, not by the time: a push
whose success was not recorded (a crash right after the commit) is pushed again under the same
name, overwriting the shard with a superset of its rows instead of adding duplicates.

The earlier layout (data/<replica>/metadata.jsonl, votes.jsonl, images/*.png) still restores, and
`python -m dadc migrate` rewrites it into this one (migrate.py).
"""
import hashlib
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub.errors import RepositoryNotFoundError

from ..store.layout import card

SHARD_BYTES = 64 * 2**20  # image bytes in one shard at most (a first push of a large store splits)
ROW_GROUP = 1000          # rows per parquet row group: a reader holds a bounded part in memory

SHARD = re.compile(r"(data|votes)/([^/]+)/(\d{8,})\.parquet")
OLD_FILE = re.compile(r"data/([^/]+)/(metadata\.jsonl|votes\.jsonl)")

CARD = card(configs="""- config_name: default
  data_files:
  - split: train
    path: "data/*/*.parquet"
- config_name: votes
  data_files:
  - split: train
    path: "votes/*/*.parquet\"""",
            layout="One folder per app replica, one parquet shard per push: `data/<replica>/<first row>.parquet`.",
            votes='The `votes` config (`load_dataset(repo, "votes")`, files `votes/<replica>/*.parquet`)')
CARD_SHA = hashlib.sha256(CARD.encode()).hexdigest()


def _value(dtype):
    return {"_type": "Value", "dtype": dtype}


# The `datasets` features, kept in each shard's schema metadata: load_dataset then decodes `image`
# and `canvas` as PIL images and `label` as a ClassLabel. "Sequence" rather than datasets 4's "List":
# older readers know it, newer ones read it as List.
FLAG_FEATURES = {
    "image": {"_type": "Image"}, "canvas": {"_type": "Image"},
    "label": {"_type": "ClassLabel", "names": [str(d) for d in range(10)]},
    "prediction": _value("int64"), "confidences": {"_type": "Sequence", "feature": _value("float64")},
    "round": _value("int64"), "time": _value("string"), "session": _value("string"), "id": _value("string"),
}
VOTE_FEATURES = {"id": _value("string"), "session": _value("string"), "agree": _value("bool"),
                 "time": _value("string"), "digit": _value("int64"), "admin": _value("bool")}
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FLAG_SCHEMA = pa.schema([
    ("image", _IMAGE), ("canvas", _IMAGE), ("label", pa.int64()), ("prediction", pa.int64()),
    ("confidences", pa.list_(pa.float64())), ("round", pa.int64()), ("time", pa.string()),
    ("session", pa.string()), ("id", pa.string())],
    metadata={"huggingface": json.dumps({"info": {"features": FLAG_FEATURES}})})
VOTE_SCHEMA = pa.schema([("id", pa.string()), ("session", pa.string()), ("agree", pa.bool_()),
                         ("time", pa.string()), ("digit", pa.int64()), ("admin", pa.bool_())],
                        metadata={"huggingface": json.dumps({"info": {"features": VOTE_FEATURES}})})


def shard_name(kind, replica, first):
    """data/<replica>/<first>.parquet (kind "data") or votes/...: `first` is the shard's first row."""
    return f"{kind}/{replica}/{first:08d}.parquet"


def flag_record(row, image, canvas):
    """One parquet row from a store row (metadata.jsonl) and the PNG bytes of its images."""
    return {"image": {"bytes": image, "path": None}, "canvas": {"bytes": canvas, "path": None},
            **{k: row[k] for k in ("label", "prediction", "confidences", "round", "time", "session", "id")}}


def vote_record(row):
    """digit: the right digit a disagreeing voter gave (or null); admin: cast by an admin."""
    return {**{k: row[k] for k in ("id", "session", "agree", "time")}, "digit": row.get("digit"),
            "admin": row.get("admin") is True}


def record_bytes(record):
    """Bytes a flag record adds to a shard (its images; the rest is small)."""
    return len(record["image"]["bytes"]) + len(record["canvas"]["bytes"])


def chunks(records):
    """Lists of consecutive flag records, each at most SHARD_BYTES of images (or one record)."""
    chunk, total = [], 0
    for r in records:
        if chunk and total + record_bytes(r) > SHARD_BYTES:
            yield chunk
            chunk, total = [], 0
        chunk.append(r)
        total += record_bytes(r)
    if chunk:
        yield chunk


def write_shard(records, schema, path):
    """Records (dicts) as one parquet file with `schema` (its `datasets` features included)."""
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path, row_group_size=ROW_GROUP)


def shard_replicas(paths):
    """Replica folders that have parquet shards (flags or votes), from the repo's file paths."""
    return {m.group(2) for m in map(SHARD.fullmatch, paths) if m}


def old_replicas(paths):
    """Replica folders of the earlier layout (a metadata.jsonl or votes.jsonl)."""
    return {m.group(1) for m in map(OLD_FILE.fullmatch, paths) if m}


def repo_files(api, repo_id):
    """The dataset repo's file paths (one listing); None if the repo does not exist yet."""
    try:
        info = api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return None  # first start: nothing pushed yet
    return [f.rfilename for f in info.siblings or []]
