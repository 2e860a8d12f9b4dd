"""`python -m dadc migrate`: rewrite a dataset repo of the earlier layout (data/<replica>/metadata.jsonl,
votes.jsonl, images/*.png: two files a flag) into parquet shards (layout.py), in one commit.

Each replica folder of the earlier layout becomes data/<replica>/00000000.parquet (more shards past
layout.SHARD_BYTES) and votes/<replica>/00000000.parquet, the names a first push of that replica
would give them, so an app still running on that replica's disk and pushing later overwrites them
with a superset instead of adding copies. A replica that already has shards (its app pushed in the
new layout, from row 0) keeps them: only its old files go. The rows are untrusted like a restore's
(rows.py): bad ones are left out and counted. The commit names the revision that was read
(parent_commit), so a push that lands meanwhile makes it fail instead of being overwritten.
"""
from collections import Counter

from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from . import layout
from .rows import ROWS, VOTES, Folder
from ..store import REPLICA_NAME


def _old_files(paths, replica):
    """(deletions of a replica's files of the earlier layout, the images as one folder; how many files)."""
    rows = [p for p in (f"data/{replica}/{ROWS}", f"data/{replica}/{VOTES}") if p in paths]
    images = [p for p in paths if p.startswith(f"data/{replica}/images/")]
    ops = [CommitOperationDelete(path_in_repo=p) for p in rows]
    if images:
        ops.append(CommitOperationDelete(path_in_repo=f"data/{replica}/images/", is_folder=True))
    return ops, len(rows) + len(images)


def _convert(folder, tmp, skipped):
    """[(path in repo, local shard file)] of one downloaded replica folder, and its (flags, votes)."""
    out, first = [], 0

    def records():
        for row, images in folder.rows(set(), skipped):
            image, canvas = (images[row[k]] for k in ("file_name", "canvas_file_name"))
            yield layout.flag_record(row, image, canvas)

    for group in layout.chunks(records()):
        out.append(_write(layout.shard_name("data", folder.name, first), group, layout.FLAG_SCHEMA, tmp))
        first += len(group)
    votes = folder.votes(None, skipped)  # any well-formed id: a restore checks them against its flags
    if votes:
        out.append(_write(layout.shard_name("votes", folder.name, 0), [layout.vote_record(v) for v in votes],
                          layout.VOTE_SCHEMA, tmp))
    return out, (first, len(votes))


def _write(rel, records, schema, tmp):
    path = tmp / rel.replace("/", "_")
    layout.write_shard(records, schema, path)
    return rel, path


def migrate(api, repo_id, tmp):
    """Rewrite the earlier layout's folders of dataset repo `repo_id` into shards, downloading into
    `tmp` (an empty folder). Returns what was done: replicas, flags, votes, shards, deleted, skipped."""
    info = api.repo_info(repo_id, repo_type="dataset")
    paths = [f.rfilename for f in info.siblings or []]
    old, with_shards = layout.old_replicas(paths), layout.shard_replicas(paths)
    done = {"replicas": 0, "flags": 0, "votes": 0, "shards": 0, "deleted": 0, "skipped": Counter()}
    if not old:
        return done
    bad = sorted(r for r in old if not REPLICA_NAME.fullmatch(r))
    if bad:
        raise ValueError(f"{repo_id} has replica folders with names no app makes: {bad[:5]}; fix them by hand")
    convert = sorted(old - with_shards)
    api.snapshot_download(repo_id, repo_type="dataset", revision=info.sha, local_dir=tmp,
                          allow_patterns=[f"data/{r}/{f}" for r in convert for f in (ROWS, VOTES, "images/*.png")])
    ops = [CommitOperationAdd(path_or_fileobj=layout.CARD.encode(), path_in_repo="README.md")]
    for replica in convert:
        shards, (flags, votes) = _convert(Folder(tmp / "data" / replica), tmp, done["skipped"])
        ops += [CommitOperationAdd(path_or_fileobj=str(path), path_in_repo=rel) for rel, path in shards]
        done["flags"] += flags
        done["votes"] += votes
        done["shards"] += len(shards)
    for replica in sorted(old):
        deletions, n = _old_files(paths, replica)
        ops += deletions
        done["deleted"] += n
    done["replicas"] = len(old)
    api.create_commit(repo_id=repo_id, repo_type="dataset", operations=ops, parent_commit=info.sha,
                      commit_message=f"Migrate {len(old)} replica folders to parquet shards "
                                     f"({done['flags']} flags, {done['votes']} votes)")
    return done
