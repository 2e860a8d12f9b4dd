"""labels.csv, the one format of a folder of drawings: a PNG per drawing and a CSV with the columns
file,label[,family,style]. drawings.make and `simulate --make-drawings` write it; simulate, import
and evaluation read it here."""
import csv
import io
from pathlib import Path

NAME = "labels.csv"


def read(folder, open_file=None):
    """The rows of folder/labels.csv, read whole: dicts with `file`, `label` (text, unchecked),
    `family` and `style` where there, and `line` (its line in the file, for error messages).
    ValueError if there is no labels.csv, or it is not CSV text with a file,label header.
    `open_file(name)`, when given, opens the folder's file `name` for reading in binary, or raises a
    ValueError of its own: how an importer refuses a labels.csv that is not a regular file inside the
    folder (dadc/campaign/importer.py)."""
    path = Path(folder) / NAME
    if open_file is None:
        if not path.is_file():
            raise ValueError(f"{folder} has no labels.csv (columns file,label[,family,style])")
        raw = open(path, "rb")
    else:
        raw = open_file(NAME)
    try:
        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{path} has no file,label header (got {reader.fieldnames})")
            return [{**row, "line": reader.line_num} for row in reader]
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable CSV file: {e}") from None
    finally:
        raw.close()


def write(folder, columns, rows):
    """Write folder/labels.csv: a header of `columns`, then one line per row (a sequence)."""
    with open(Path(folder) / NAME, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
