"""The flag store's file names and row format, and its dataset card: what every reader and writer
of DADC_HOME/flags agrees on (the store, the Hub's layout and checks build on these).

    flags/README.md                          dataset card of the local folder (tells `datasets` which files are data)
    flags/replica                            this DADC_HOME's replica id (Hub paths data/<replica>/, votes/<replica>/)
    flags/data/<replica>/metadata.jsonl      one JSON row per flagged example, append-only (ROWS)
    flags/data/<replica>/votes.jsonl         votes ("I agree this is a 7"), append-only (VOTES)
    flags/data/<replica>/images/<id>.png     the 28x28 image (white digit on black, as MNIST)
    flags/data/<replica>/images/<id>-canvas.png   the original canvas
    flags/pushed.json                        what the pushes to each Hub repo carried (byte offsets, rows)
    flags/tmp/  flags/.lock  flags/.push.lock     never pushed
"""
import re
from pathlib import Path
from string import Template

ROWS, VOTES = "metadata.jsonl", "votes.jsonl"
PUSHED = "pushed.json"  # what the pushes to each Hub repo carried (hub.sync), under flags/
PULLED = "pulled.json"  # what a trainer's pulls took of each Hub repo (hub/mirror.py), under flags/
FIELDS = ("file_name", "canvas_file_name", "label", "prediction", "confidences", "round", "time", "session", "id")
MAX_SESSION = 200  # characters of a row's `session` (the visitor's id) kept
REPLICA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a replica folder name from outside is used only if plain

_CARD = Template((Path(__file__).parent / "card.md").read_text())

# The local folder's card: only images and metadata.jsonl are data files, so the votes.jsonl files
# never make `datasets` pick the json builder instead of imagefolder.
LOCAL_CONFIGS = """- config_name: default
  data_files:
  - split: train
    path:
    - "data/*/metadata.jsonl"
    - "data/*/images/*.png\""""


def card(configs=LOCAL_CONFIGS, layout="One folder per app replica under `data/`.",
         votes="`data/*/votes.jsonl`"):
    """The dataset card (README.md) of a copy of the store: the local folder's by default; the Hub
    layout passes its own `configs` (YAML list items), where the files are, and where the votes are."""
    return _CARD.substitute(configs=configs, layout=layout, votes=votes)
