"""Co-training runs, by stage: ``config`` (what a run is, checked before any work), ``run`` (what a
launch sets up: process group, checkpoint, data, model), ``precision`` (autocast, compile),
``schedule`` (learning rate, gate noise, the epochs a time budget fits), ``loop`` (``train``: the
epochs, checkpoints, the learned pattern; its docstring says what a run writes), ``evaluation``
(what a run is worth, and ``hwbench eval``), ``budget`` (the latency budget term), ``recipe``
(the paper's values), ``finetune`` (recovery fine-tuning of a deployed network). Import a name
from its module: this package's ``__init__`` loads nothing, so the CLI can read the recipes
without torch."""
