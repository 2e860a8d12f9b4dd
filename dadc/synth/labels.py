"""labels.csv, the one format of a folder of drawings: a PNG per drawing and a CSV with the columns
file,label[,family,style]. drawings.make and `simulate --make-drawings` write it; simulate, import
and evaluation read it here."""
import csv
from pathlib import Path

NAME = "labels.csv"


def read(folder):
    """The rows of folder/labels.csv, read whole: dicts with `file`, `label` (text, unchecked),
    `family` and `style` where there, and `line` (its line in the file, for error messages).
    ValueError if there is no labels.csv, or it is not CSV text with a file,label header."""
    path = Path(folder) / NAME
    if not path.is_file():
        raise ValueError(f"{folder} has no labels.csv (columns file,label[,family,style])")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{path} has no file,label header (got {reader.fieldnames})")
            return [{**row, "line": reader.line_num} for row in reader]
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable CSV file: {e}") from None


def write(folder, columns, rows):
    """Write folder/labels.csv: a header of `columns`, then one line per row (a sequence)."""
    with open(Path(folder) / NAME, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
