"""Whole-state tensor operations the gate, the snapshots and the update protector share."""
import torch

_NORM_TAKES_DTYPE = [True]  # torch._foreach_norm(..., dtype=) exists (torch 2.x); found out on first use


def foreach_norms(tensors, ord=2):
    """Per-tensor norms (``ord`` 2, or ``inf`` for max |x|) as float32 tensors, one fused kernel per
    device/dtype group where available, computed in float32 where torch allows it (else in the
    tensors' dtype, then converted)."""
    if hasattr(torch, "_foreach_norm"):
        if _NORM_TAKES_DTYPE[0]:
            try:
                return torch._foreach_norm(tensors, ord, dtype=torch.float32)
            except TypeError:  # torch 1.13: no dtype argument
                _NORM_TAKES_DTYPE[0] = False
            except RuntimeError:  # a float64 tensor (no narrowing to float32), sparse, mixed devices
                pass
        try:  # in the tensors' dtypes: a float64 norm beyond float32's range becomes inf (the safe side)
            return [n.float() for n in torch._foreach_norm(tensors, ord)]
        except (RuntimeError, TypeError):
            pass
    return [torch.linalg.vector_norm(t.float(), ord) for t in tensors]


def copy_tensors(dst, src, non_blocking=False):
    """``dst[i].copy_(src[i])`` for every pair: one foreach copy where torch has it and the pairs
    allow it (a torch whose foreach copy refuses mixed devices copies them one by one)."""
    with torch.no_grad():
        if hasattr(torch, "_foreach_copy_"):
            try:
                torch._foreach_copy_(dst, src, non_blocking=non_blocking)
                return
            except (RuntimeError, TypeError):
                pass
        for d, s in zip(dst, src):
            d.copy_(s, non_blocking=non_blocking)


def all_finite(tensors, on=None):
    """A 0-d bool tensor (on the tensors' device, or ``on``): every floating value of ``tensors`` is
    finite; None when none is floating. One max |x| per tensor (a foreach launch), no host read."""
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return None
    with torch.no_grad():  # live parameters among them: no autograd record of the check
        norms = foreach_norms(floats, float("inf"))
        return torch.isfinite(torch.stack(norms if on is None else [n.to(on) for n in norms])).all()
