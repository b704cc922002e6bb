"""What ``Guard.step`` is given, checked where a mistake is still easy to name."""
import numbers
import operator

import torch


def checked(step, loss):
    """``step`` as an int, or a TypeError/ValueError that says what to pass (instead of one from deep
    inside the measurement or the report)."""
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"guard.step(step, loss): step must be an integer (the loop's step number), "
                        f"not {type(step).__name__} {step!r}") from None
    if torch.is_tensor(loss):
        if loss.numel() != 1:
            raise ValueError(f"guard.step(step, loss): loss must be one value, got a tensor of shape "
                             f"{tuple(loss.shape)}: pass the loss you backpropagated (e.g. loss.mean())")
        if loss.device.type == "meta":
            raise ValueError("guard.step(step, loss): the loss is on the 'meta' device (no data): pass the "
                             "loss your real forward computed")
    elif loss is not None and not isinstance(loss, numbers.Real):
        raise TypeError(f"guard.step(step, loss): loss must be a tensor, a number or None, not {type(loss).__name__}")
    return step
