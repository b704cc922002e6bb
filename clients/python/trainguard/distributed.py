"""Cross-rank agreement: every rank applies the same action (the most severe wins) to the same
rollback target, with one small all_reduce per step; one broadcast only on ROLLBACK/HALT."""
import collections
import socket
import time

import torch

from .errors import TrainguardError
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


def rank_and_world(rank, world):
    """(rank, world size): the ones given, else the process group's where one is initialised, else 0 and 1."""
    if is_initialized():
        rank = _dist().get_rank() if rank is None else rank
        world = _dist().get_world_size() if world is None else world
    return rank or 0, world or 1


class EveryRank:
    """Whether every rank built a Guard for the run, asked once, before the guard's first collective.

    A Guard built on rank 0 only (``if rank == 0: guard = Guard(...)``) would wait in that collective
    for ranks that never join it, or pair it with a collective of their own. Counted in the process
    group's store, which needs no collective; by the first step the other ranks are past their first
    backward (DDP's and FSDP's own collectives), so their Guards, if any, exist."""

    WAIT_S = 120.0
    _built = collections.Counter()  # run -> Guards this process built for it: the same count on every rank
    _guards = 0  # Guards this process built on several ranks: the n-th Guard of each rank belongs together

    def __init__(self, run, world, rank=0):
        self.run, self.world, self.rank, self.key, self.store = run, world, rank, None, None
        self.sidecar = ""     # which sidecar this rank talks to (sidecar_identity), set once the Guard has its target
        self._leader = None   # whether this rank registers its snapshots with its sidecar (registers_snapshots)
        if world <= 1 or not is_initialized():
            return
        try:
            from torch.distributed import distributed_c10d
            self.store = distributed_c10d._get_default_store()
        except Exception:  # no store to count in (a process group of another kind): nothing is checked
            return
        EveryRank._built[run] += 1
        self.key = f"trainguard/{run}/guards-built/{EveryRank._built[run]}"
        self.store.add(self.key, 1)
        # the run id each rank's n-th Guard opened, under a key of no run: ranks that opened different ids
        # (an id made of the time, across ranks that started in different seconds) are told so at once
        EveryRank._guards += 1
        self.runs_key = f"trainguard/guard-{EveryRank._guards}/rank"
        self.store.set(f"{self.runs_key}{rank}", run)

    def check(self):
        if self.key is None:
            return
        key, self.key = self.key, None
        self.store.set(f"trainguard/{self.run}/sidecar/{self.rank}", self.sidecar)
        end = time.monotonic() + self.WAIT_S
        while True:
            built = self.store.add(key, 0)
            if built >= self.world:
                return
            self._same_run_everywhere()
            if time.monotonic() > end:
                raise TrainguardError(
                    f"only {built} of {self.world} ranks built a Guard for run '{self.run}' (none more within "
                    f"{self.WAIT_S:.0f} s of this rank's first step): build it on every rank, not only on rank 0. "
                    f"Every rank joins each step's agreement on the action, so no rank applies an update another skipped")
            time.sleep(0.01)

    def registers_snapshots(self):
        """Whether this rank registers the ranks' in-memory snapshots with its sidecar: the lowest rank of
        those that talk to the same sidecar (one rank per sidecar). With one sidecar per node (the
        multi-node layout) rank 0 alone registered them, with its own sidecar: the others had no target,
        and a burst that one of them judged halted the job instead of rolling back. Asked after
        ``check()``, when every rank has said which sidecar it talks to."""
        if self.key is not None:  # before the first step, the ranks have not said yet: rank 0, as before
            return self.rank == 0
        if self._leader is None:
            if self.store is None:
                self._leader = self.rank == 0
            else:
                mine = [r for r in range(self.world)
                        if self.store.get(f"trainguard/{self.run}/sidecar/{r}").decode() == self.sidecar]
                self._leader = min(mine, default=self.rank) == self.rank
        return self._leader

    def _same_run_everywhere(self):
        """Raises when a rank's Guard of the same order opened another run id than this one."""
        for r in range(self.world):
            key = f"{self.runs_key}{r}"
            if r != self.rank and self.store.check([key]):
                other = self.store.get(key).decode()
                if other != self.run:
                    raise TrainguardError(
                        f"rank {r} opened run '{other}' where this rank (rank {self.rank}) opened '{self.run}': every "
                        f"rank must pass the same run id. An id made of the time differs across ranks that start "
                        f"in different seconds: make it on rank 0 and broadcast it, or use $TORCHELASTIC_RUN_ID")


def sidecar_identity(target):
    """Which sidecar a target reaches, comparable across ranks: a Unix socket or a loopback address is
    this host's sidecar (the same string on another node is another sidecar), any other address is
    that address's."""
    local = target.startswith("unix:") or any(h in target for h in ("127.0.0.1", "localhost", "[::1]"))
    return f"{socket.gethostname()}|{target}" if local else target


def _device():
    d = _dist()
    return torch.device("cuda", torch.cuda.current_device()) if d.get_backend() == "nccl" else torch.device("cpu")


def all_true(flag):
    d = _dist()
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_device())
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return int(t.item()) == 0


def global_norms(stats, start, end):
    """``stats`` with its entries ``[start, end)`` -- L2 norms of this rank's shard of the gradients
    (FSDP) -- made the global norms, the root of the sum of every rank's squares, as FSDP's
    ``clip_grad_norm_`` computes them (one all_reduce). Non-finite stays non-finite."""
    d = _dist()
    dev = _device()
    sq = stats[start:end].double().pow(2).to(dev)
    d.all_reduce(sq)
    out = stats.clone()
    out[start:end] = sq.sqrt().to(out.device, out.dtype)
    return out


def max_ints(values):
    """The element-wise maximum over all ranks of a short list of ints (one all_reduce)."""
    d = _dist()
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_device())
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def agree(guard, verdict, error, need_host=False):
    """Returns (verdict, error, host_next) agreed by all ranks; ``host_next``: some rank asked for
    the host path at the next step too (``need_host``; see Guard's multi-rank device gate)."""
    d = _dist()
    n, me = d.get_world_size(), d.get_rank()
    sev = _ERROR if error is not None else int(verdict.action)
    has_plan = sev in (Action.ROLLBACK, Action.HALT, _ERROR)
    thr = verdict.clip_threshold if verdict.action == Action.CLIP and verdict.clip_threshold > 0 else float("inf")
    # [severity, source score (lowest rank with a plan wins), -clip threshold (the tightest wins),
    #  some rank needs the host path next step, the step number, minus it (ranks that judged different
    #  steps: a loop bug, which the sidecar would only see as every step's cross-rank mismatch)]
    t = torch.tensor([float(sev), float(n - me) if has_plan else 0.0, -thr if thr != float("inf") else -1e300,
                      1.0 if need_host else 0.0, float(verdict.step), -float(verdict.step)],
                     dtype=torch.float64, device=_device())
    d.all_reduce(t, op=d.ReduceOp.MAX)
    sev_max, score_max, neg_thr, host_next, step_max, neg_step_min = t.tolist()  # one device read
    host_next = host_next > 0
    if step_max != -neg_step_min and error is None:
        from .errors import TrainguardError
        error = TrainguardError(
            f"the ranks passed different step numbers to guard.step() (from {int(-neg_step_min)} to {int(step_max)}; "
            f"this rank {verdict.step}): every rank must judge the same step. Pass each rank the same number (the "
            f"optimizer step count, not a per-rank counter, an epoch-local index or a count of its micro-batches)")
        return verdict, error, host_next  # every rank read the same numbers: every rank stops here
    agreed, src_score = int(sev_max), int(score_max)
    if agreed == int(verdict.action) and error is None and agreed not in (Action.ROLLBACK, Action.HALT):
        if agreed == Action.CLIP and -neg_thr < verdict.clip_threshold:
            verdict.clip_threshold = -neg_thr
        return verdict, None, host_next
    if agreed in (Action.ROLLBACK, Action.HALT, _ERROR):
        src = n - src_score
        payload = [(verdict, str(error) if error is not None else None)] if me == src else [None]
        d.broadcast_object_list(payload, src=src)
        v, err_msg = payload[0]
        if agreed == _ERROR:
            from .errors import TrainguardError
            return v, (error if error is not None else TrainguardError(f"rank {src} stopped: {err_msg}")), host_next
        if me != src:
            v.reasons = list(v.reasons) + [f"agreed with rank {src}"]
        return v, None, host_next
    # A milder local verdict is raised to the agreed one (CLIP or SKIP).
    v = Verdict(verdict.step, Action(agreed), clip_threshold=-neg_thr if agreed == Action.CLIP else 0.0,
                validation_allowed=False, reasons=list(verdict.reasons) + [f"another rank's verdict was {Action(agreed).name}"],
                bounds=verdict.bounds, decided_locally=verdict.decided_locally)
    return v, None, host_next


# ---------------------------------------------------------------------------- the device gate, multi-rank
#: Relative spread of the grad norm across replicated ranks above which the step is treated as
#: corrupted (after DDP's all-reduce every rank holds the same gradients, so the norms are equal).
NORM_SPREAD_TOLERANCE = 1e-5


class RankEntries:
    """A rank's own entries of the gate collective, float64 ``[clip threshold, 1, step]`` (``[0, 0, step]``
    without a threshold), kept in one device buffer that fill kernels rewrite: the step at every
    step, the threshold when it changes (with an adaptive bound, most steps), the flag when it
    starts or stops. A tensor made from host values would be a host-to-device copy that waits for
    the device: 1.13-1.25x under DDP on 2 H200s
    (bench/gpu/results/2026-11-30-s16-multi-gpu-agreed-2xh200.log). The collective copies the buffer
    (``torch.cat``) in stream order before the next rewrite.

    The step goes in modulo ``step_modulus(world)``, small enough that the sums of the ranks' steps
    and of their squares, and the test ``world * sum(s^2) == sum(s)^2``, are exact in float64: the
    ranks passed the same step number exactly when it holds (steps that differ by a multiple of the
    modulus pass, once; a loop bug that numbers its ranks differently is caught at its first step)."""

    def __init__(self, device, world):
        self.tensor = torch.zeros(3, dtype=torch.float64, device=device)
        self._value, self._threshold, self._has, self._step = 0.0, self.tensor[0], self.tensor[1], self.tensor[2]
        self._modulus, self._step_value = step_modulus(world), 0

    def of(self, threshold, step):
        if threshold != self._value:
            has = threshold > 0
            self._threshold.fill_(float(threshold) if has else 0.0)
            if has != (self._value > 0):
                self._has.fill_(1.0 if has else 0.0)
            self._value = threshold
        step %= self._modulus
        if step != self._step_value:
            self._step.fill_(float(step))
            self._step_value = step
        return self.tensor


def step_modulus(world):
    """The largest power of two M for which ``world * M`` stays below 2^26: the sums of the ranks'
    steps (< world * M) and of their squares, and ``world * sum(s^2)`` and ``sum(s)^2`` (< 2^52), are
    integers float64 holds exactly."""
    return 1 << max(1, min(20, 26 - int(world).bit_length()))


def agreed_threshold(vec_values):
    """The clip threshold every rank applied, from the host copy of the reduced vector: the mean of
    the ranks' thresholds (0: no rank had one)."""
    total, ranks = vec_values[5], vec_values[6]
    return total / ranks if ranks > 0 else 0.0


def gate_collective(bad, need_host, local_norm, sharded, entries):
    """One in-stream ``all_reduce(SUM)`` (no host read) over float64
    ``[non-finite flag, needs-host flag, norm^2, norm, norm^2, threshold, has a threshold, step, step^2]``
    (``entries``: this rank's ``RankEntries``). Returns device tensors
    ``(skip, global_norm, 1 / threshold, reduced)``: ``skip`` is 1.0 when any rank saw a non-finite value,
    when the ranks passed different step numbers (a loop bug, raised at the next step by
    ``steps_differ``) or, for replicated gradients, when the ranks' norms disagree (a
    silent-data-corruption signal); the global norm
    is ``sqrt(sum of squares)`` for sharded gradients (FSDP, as ``clip_grad_norm_`` computes it) and the
    mean for replicated ones (DDP). The clip threshold is agreed too: each rank's comes with its own
    verdicts, and two verdicts for one step may carry different bounds (the sidecar learns from every
    rank's report in turn), yet every rank must divide the same gradients by the same number. It is
    the mean of the ranks' thresholds, returned as its inverse (0: no rank has one), so that the
    divisor is one multiply and one clamp. (The host path's agreement takes the tightest threshold;
    a SUM collective can only give the mean, and a norm above a rank's own bound still goes to the
    sidecar.) ``reduced`` is the summed vector, read later on the host."""
    d = _dist()
    n = torch.nan_to_num(local_norm.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)
    flags = torch.stack([bad.double(), need_host.double()])
    st = entries[2]
    vec = torch.cat([flags, torch.stack([n * n, n, n * n]), entries, (st * st).reshape(1)])
    d.all_reduce(vec, op=d.ReduceOp.SUM)
    world = float(d.get_world_size())
    skip = (vec[0] > 0) | (world * vec[8] - vec[7] * vec[7] > 0.5)
    if sharded:
        norm = vec[2].sqrt()
    else:
        mean = vec[3] / world
        var = (vec[4] / world - mean * mean).clamp(min=0.0)
        skip = skip | (var.sqrt() > NORM_SPREAD_TOLERANCE * mean)
        norm = mean
    inverse = vec[6] / vec[5].clamp(min=torch.finfo(torch.float64).tiny)  # [0, 0]: 0
    # norm and inverse stay float64 into the float32 divisor: a sharded norm beyond float32's range
    # times a 0 inverse (no clip) is 0, where a float32 inf would give NaN
    return skip.float(), norm, inverse, vec


def steps_differ_message(step):
    return (f"the ranks passed different step numbers to guard.step() (this rank passed {step}); every rank "
            f"must judge the same step, and the device skipped that step's update on every rank. Pass each "
            f"rank the same number (the optimizer step count, not a per-rank counter, an epoch-local index or a "
            f"count of its micro-batches)")


def steps_differ(vec_values, world):
    """Whether the ranks passed different step numbers (``RankEntries``), from the host copy of
    the reduced vector: every sum is an exact integer."""
    return world * vec_values[8] != vec_values[7] * vec_values[7]


def norms_disagree(spread):
    """Whether the ranks' grad norms differ beyond the tolerance (``reduced_flags``' spread; None:
    sharded, where they differ by design): the device skipped the step on every rank."""
    return spread is not None and spread > NORM_SPREAD_TOLERANCE


def reduced_flags(vec_values, world, sharded):
    """Host-side reading of the reduced vector: (any rank non-finite, any rank needs the host path
    next step, norm spread across ranks relative to the mean, None when sharded)."""
    bad, need, _, s, s2 = vec_values[:5]
    spread = None
    if not sharded and s > 0:
        mean = s / world
        spread = max(s2 / world - mean * mean, 0.0) ** 0.5 / mean
    return bad > 0, need > 0, spread
