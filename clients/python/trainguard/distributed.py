"""Cross-rank agreement: every rank applies the same action (the most severe wins) to the same
rollback target, with one small all_reduce per step; one broadcast only on ROLLBACK/HALT."""
import torch

from .verdict import Action, Verdict

_ERROR = 6  # a rank hit an error (fail-closed): every rank stops


def _dist():
    import torch.distributed as d
    return d


def is_initialized():
    try:
        d = _dist()
        return d.is_available() and d.is_initialized()
    except Exception:
        return False


def rank():
    return _dist().get_rank()


def world_size():
    return _dist().get_world_size()


def barrier():
    _dist().barrier()


def _device():
    d = _dist()
    return torch.device("cuda", torch.cuda.current_device()) if d.get_backend() == "nccl" else torch.device("cpu")


def all_true(flag):
    d = _dist()
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_device())
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return int(t.item()) == 0


def max_ints(values):
    """The element-wise maximum over all ranks of a short list of ints (one all_reduce)."""
    d = _dist()
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_device())
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def agree(guard, verdict, error):
    """Returns (verdict, error) agreed by all ranks."""
    d = _dist()
    n, me = d.get_world_size(), d.get_rank()
    sev = _ERROR if error is not None else int(verdict.action)
    has_plan = sev in (Action.ROLLBACK, Action.HALT, _ERROR)
    thr = verdict.clip_threshold if verdict.action == Action.CLIP and verdict.clip_threshold > 0 else float("inf")
    # [severity, source score (lowest rank with a plan wins), -clip threshold (the tightest wins)]
    t = torch.tensor([float(sev), float(n - me) if has_plan else 0.0, -thr if thr != float("inf") else -1e300],
                     dtype=torch.float64, device=_device())
    d.all_reduce(t, op=d.ReduceOp.MAX)
    sev_max, score_max, neg_thr = t.tolist()  # one device read for the three
    agreed, src_score = int(sev_max), int(score_max)
    if agreed == int(verdict.action) and error is None and agreed not in (Action.ROLLBACK, Action.HALT):
        if agreed == Action.CLIP and -neg_thr < verdict.clip_threshold:
            verdict.clip_threshold = -neg_thr
        return verdict, None
    if agreed in (Action.ROLLBACK, Action.HALT, _ERROR):
        src = n - src_score
        payload = [(verdict, str(error) if error is not None else None)] if me == src else [None]
        d.broadcast_object_list(payload, src=src)
        v, err_msg = payload[0]
        if agreed == _ERROR:
            from .errors import TrainguardError
            return v, (error if error is not None else TrainguardError(f"rank {src} stopped: {err_msg}"))
        if me != src:
            v.reasons = list(v.reasons) + [f"agreed with rank {src}"]
        return v, None
    # A milder local verdict is raised to the agreed one (CLIP or SKIP).
    v = Verdict(verdict.step, Action(agreed), clip_threshold=-neg_thr if agreed == Action.CLIP else 0.0,
                validation_allowed=False, reasons=list(verdict.reasons) + [f"another rank's verdict was {Action(agreed).name}"],
                bounds=verdict.bounds, decided_locally=verdict.decided_locally)
    return v, None
