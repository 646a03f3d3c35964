"""Keep TorchDynamo out of eager jobs: it is imported lazily by torch, at ~1 s of CPU a job.

Three places in an eager training job import `torch._dynamo` without compiling anything:
`torch.use_deterministic_algorithms` (via `torch._inductor.config`, which accelerate's
`set_seed(deterministic=True)` calls), the first call of a `torch.optim.Optimizer` method
wrapped by `torch._compile._disable_dynamo` (`add_param_group`, `zero_grad`, `state_dict`,
`load_state_dict`), and every `step()` decorated with `_use_grad_for_differentiable` (Adam's,
AdamW's), which imports dynamo only to place two `graph_break()`s, no-ops outside a compiled
frame. A pipeline job trains in well under a second, so this import was a third of its CPU
time. All three are avoided here with the same effects while nothing compiles; once
`torch._dynamo` is loaded (someone calls `torch.compile`), torch's own code runs again.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any


def set_seed(seed: int, deterministic: bool = False) -> None:
    """accelerate.utils.set_seed(seed, deterministic=...) with the same effects, minus dynamo."""
    import torch
    from accelerate.utils import set_seed as seed_everything

    seed_everything(seed)  # random, numpy, torch and every available device, as before
    if deterministic:
        # the two statements of torch.use_deterministic_algorithms(True), inductor's flag set
        # through the variable its config reads when it is first imported
        inductor = sys.modules.get("torch._inductor.config")
        if inductor is not None:
            inductor.deterministic = True
        else:
            os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
        torch._C._set_deterministic_algorithms(True, warn_only=False)


def _until_dynamo(fn: Callable, recursive: bool) -> Callable:
    """fn itself while dynamo is unloaded (nothing can be tracing it), else torch's wrapper."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        import torch._dynamo

        disabled = torch._dynamo.disable(fn, recursive, wrapping=False)
        setattr(fn, "__dynamo_disable", disabled)  # the cache torch's wrapper reads
        return disabled(*args, **kwargs)

    return call


def _eager_step(original: Callable, step: Callable) -> Callable:
    """`_use_grad_for_differentiable(step)` without its dynamo import while dynamo is unloaded."""

    @functools.wraps(original)
    def _use_grad(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:
            return original(*args, **kwargs)
        import torch

        prev = torch.is_grad_enabled()
        try:  # torch's wrapper minus the graph breaks
            torch.set_grad_enabled(args[0].defaults["differentiable"])
            return step(*args, **kwargs)
        finally:
            torch.set_grad_enabled(prev)

    _use_grad.cmcl_eager = True  # type: ignore[attr-defined]
    return _use_grad


def defer_dynamo(*classes: type) -> int:
    """Patch the dynamo-importing wrappers defined on `classes` (optimizers); returns how many.

    A `_disable_dynamo` method gets its lazy cache (`fn.__dynamo_disable`, which torch's
    wrapper reads before importing dynamo) pre-filled; a `_use_grad_for_differentiable` step
    is replaced by the same wrapper minus the dynamo import. A step already wrapped by the
    profiling hook (an optimizer of that class was built before) and wrappers of an unknown
    torch layout are left as they are.
    """
    import torch._compile
    from torch.optim.optimizer import _use_grad_for_differentiable

    disable = torch._compile._disable_dynamo(lambda: None).__code__
    use_grad = _use_grad_for_differentiable(lambda self: None).__code__
    done = 0
    for cls in classes:
        for name, f in list(vars(cls).items()):
            code = getattr(f, "__code__", None)
            if code is None or not f.__closure__ or code not in (disable, use_grad):
                continue
            cells = dict(zip(code.co_freevars, (c.cell_contents for c in f.__closure__),
                             strict=True))
            if code is use_grad and callable(cells.get("func")):
                setattr(cls, name, _eager_step(f, cells["func"]))
                done += 1
            elif code is disable and callable(cells.get("fn")) and \
                    getattr(cells["fn"], "__dynamo_disable", None) is None:
                fn = cells["fn"]
                setattr(fn, "__dynamo_disable", _until_dynamo(fn, cells.get("recursive", True)))
                done += 1
    return done
