"""The Guard's own state that round-trips through the trainer's checkpoint (``guard.state_dict()``):
counters, the rollback generation, the last LocalBounds, the checkpoints it knows, the policy
overrides, the recovery state (LR cuts, replay budget, known-bad data positions) and how a loop that
kept counting after a rollback is renumbered (numbering.py)."""
import logging

from .verdict import LocalBounds

log = logging.getLogger("trainguard")


def state_dict(guard):
    with guard._lock:
        return {"version": 1, "run": guard.run, "counters": dict(guard.counters), "generation": guard.generation,
                "bounds": None if guard.bounds is None else vars(guard.bounds).copy(),
                "checkpoints": {k: dict(v) for k, v in guard.checkpoints.items()},
                "rewarm": guard.recovery.lr.rewarm, "policy": dict(guard.policy_overrides),
                "last_step": guard.last_step, "recovery": guard.recovery.state_dict(),
                "loop_shift": guard.numbering.shift}


def load_state_dict(guard, state):
    if getattr(guard, "_restoring", False):
        # a restore_hook loading a checkpoint that holds the guard too (Fabric's fabric.load(path, state)
        # with "guard" in the state): the rollback under way owns the guard's state; taking the saved one
        # would reset its counters and checkpoint records and cut the LR again on top of the cut it carries
        log.debug("trainguard: the guard's saved state is left out of a rollback's restore")
        return
    if state.get("version") != 1:
        raise ValueError(f"unknown trainguard state version {state.get('version')}")
    with guard._lock:
        guard.counters.update(state["counters"])
        guard.generation = state["generation"]
        guard.bounds = LocalBounds(**state["bounds"]) if state.get("bounds") else guard.bounds
        guard.checkpoints = {int(k): dict(v) for k, v in state["checkpoints"].items()}
        guard.last_step = state.get("last_step")
        guard.numbering.shift = int(state.get("loop_shift", 0))  # a loop renumbered after a rollback
        guard.recovery.load_state_dict(state.get("recovery"))
        if state.get("rewarm") and not state.get("recovery"):
            guard.recovery.lr.rewarm = tuple(state["rewarm"])
