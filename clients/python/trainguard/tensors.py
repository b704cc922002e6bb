"""Two whole-state tensor operations the snapshots and the update protector share."""
import torch


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
    norms = (torch._foreach_norm(floats, float("inf")) if hasattr(torch, "_foreach_norm")
             else [f.abs().max() for f in floats])
    return torch.isfinite(torch.stack([n.float() if on is None else n.float().to(on) for n in norms])).all()
