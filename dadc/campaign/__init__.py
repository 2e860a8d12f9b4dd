"""Whole campaigns at once, for researchers: bring drawings in, take the dataset out, simulate rounds.

importer.py  `python -m dadc import`: a folder of drawings or an export into the store
export.py    `python -m dadc export`: the store as a parquet `datasets` dataset
simulate.py  `python -m dadc simulate`: headless DADC rounds over a folder of drawings
"""
