"""Digits made by program, as a person would draw them on the app's canvas: for training's
augmentation, tests, benchmarks and simulated campaigns. Nothing here measures a model
(model/evaluate.py does).

canvas.py    placing a digit on the canvas (stamp); MNIST digits pasted on canvases of any format
augment.py   MNIST digits redrawn on the canvas with a person's jitter (training's pool)
drawings.py  style-varied, mouse-like drawings of every digit, by family
pen.py       a second generator, made another way: via points chased by a damped-spring pen (reporting only)
jitter.py    a flag as a small family: the drawing redrawn with a hand's jitter (a round's human examples)
fonts.py     digits typed in a font (training fonts in typefaces/, evaluation in every other)
labels.py    labels.csv, the format of a folder of drawings
"""
