"""Rounds: the served model and the ones that may replace it.

registry.py  Registry (rounds on disk, CURRENT, history) and Predictor (the serving model, hot-swapped)
gate.py      measure a round on fixed sets; the gate's rule; a round's row of the matrix
retrain.py   RetrainJob: when a round starts, one round end to end, its Status
isolate.py   a function run in a forked child at the lowest CPU priority (the app's background round)
"""
from .registry import ROUND0, ROUND_FILES, Predictor, Registry
from .retrain import TRAIN_LOCK, RetrainJob

__all__ = ["ROUND0", "ROUND_FILES", "Predictor", "Registry", "TRAIN_LOCK", "RetrainJob"]
