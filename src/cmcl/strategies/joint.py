"""Joint training on the union of all tasks: the upper bound of the continual-learning table.

Not a continual method: the pipeline gives a `joint` run a single training step over every
task's training data (steps 0 and T only), so its final row is comparable with the others and
its BWT is undefined.
"""

from cmcl.strategies import LR, Strategy, register


@register
class Joint(Strategy):
    name = "joint"
    description = "joint training on all tasks at once (upper bound; one step over the union)"
    citation = "reference point"
    joint = True
    space = {"train.lr": LR}  # nothing of its own to tune: the learning rate only
