"""Vanilla sequential fine-tuning: the lower bound every continual method must beat."""

from cmcl.strategies import Strategy, register


@register
class Finetune(Strategy):
    name = "finetune"
    description = "sequential fine-tuning, no protection against forgetting (Vanilla)"
    citation = "baseline"
