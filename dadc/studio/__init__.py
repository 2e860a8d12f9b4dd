"""What the app does, as plain Python (no Gradio): the Studio and the rules about visitors.

service.py    Studio: predict, flag, vote, retract, rollback, nicknames; who may do what (StudioError)
limits.py     what a flood of flags may cost: rate limits, the anonymous budget, the store's cap
visitors.py   what is remembered of visitors besides their flags: attempts per round, nicknames
tally.py      the visitors' running counts in memory, and what fools the serving round
dashboard.py  the dashboard's numbers, from the parts of a Studio it is given
"""
from .service import Studio, StudioError, Visitor
from .tally import Tally

__all__ = ["Studio", "StudioError", "Visitor", "Tally"]
