"""trainguard: the trainer side of the trainguard sidecar.

    guard = trainguard.Guard(model, optimizer, run="my-run", target="127.0.0.1:7474")
    for step, batch in enumerate(loader):
        loss = model(batch).mean(); loss.backward()
        guard.step(step, loss)          # between backward() and optimizer.step()
        guard.optimizer_step(); optimizer.zero_grad()

torch is imported by Guard's module only; no web framework is ever imported.
"""
from .errors import RunRefused, SidecarUnavailable, TrainguardError, TrainingHalted
from .verdict import Action, LocalBounds, RollbackPlan, Verdict

__version__ = "0.1.0"
__all__ = ["Guard", "Action", "Verdict", "RollbackPlan", "LocalBounds", "TrainguardError", "RunRefused",
           "TrainingHalted", "SidecarUnavailable", "NonFiniteUpdate", "Sidecar"]


def __getattr__(name):  # lazy: `import trainguard` does not import torch until Guard is used
    if name in ("Guard", "NonFiniteUpdate"):
        from . import guard
        return getattr(guard, name)
    if name == "Sidecar":
        from .sidecar import Sidecar
        return Sidecar
    raise AttributeError(name)
