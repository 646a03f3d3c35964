"""Vanilla sequential fine-tuning: the lower bound every continual method must beat."""

from cmcl.strategies import LR, Strategy, register


@register
class Finetune(Strategy):
    name = "finetune"
    description = "sequential fine-tuning, no protection against forgetting (Vanilla)"
    citation = "baseline"
    space = {"train.lr": LR}  # nothing of its own to tune: the learning rate only
