"""Hooks the guard installs on the user's model, made to be left behind by a copy of it.

A module's hooks are pickled and deep-copied with it: ``torch.save(model)`` (pytorch/examples'
word_language_model saves its whole model), ``copy.deepcopy(model)`` (an EMA copy), a model handed
to ``multiprocessing``. A closure cannot be pickled, so the save failed; and a deep copy kept calling
the guard with the copy's outputs. Wrapped in ``Detached``, a hook is copied as an inert one:
``functools.partial(sys.audit, ...)`` (standard library only, so loading the saved model does not
need trainguard), which takes any arguments and returns None (a forward hook that returns None
leaves the output alone).

``nn.DataParallel`` (the HF Trainer's choice on a machine with several GPUs and no ``torchrun``)
copies the module for every GPU at every forward and runs the copies in threads; the copies share
the original's hooks. A hook called by such a replica returns at once: its tensors are on another
GPU, its calls race the others', and the guard's step reads the gradients DataParallel gathered on
the first GPU. The step is then judged without what the replicas compute (the loss read in a hook,
the watched modules' statistics).
"""
import functools
import sys

from torch.nn import Module


class Detached:
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        # a DataParallel replica's forward; read from __dict__: a getattr that misses goes through
        # Module.__getattr__ and raises inside it, ~3 us on every hook call of every step
        if args and isinstance(args[0], Module) and args[0].__dict__.get("_is_replica", False):
            return None
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return functools.partial, (sys.audit, "trainguard.hook.left-behind")
