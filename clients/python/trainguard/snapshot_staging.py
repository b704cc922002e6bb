"""A device-side copy of the snapshot state, so that a snapshot holds up training for a
device-to-device copy instead of a device-to-host one.

Without it, a snapshot copies several hundred tensors straight to pinned host memory on a side
stream, and the next ``optimizer.step()`` waits on the device until that copy has read them: with
GPT-2 small (1.49 GB of weights and AdamW state) the copy takes ~30 ms on an H200 and, with two
GPUs copying at once under DDP, the rounds a snapshot fell in took 20-100 ms longer
(``docs/benchmarks.md``, "Issue 21, tenth pass"). With it:

- one ``_foreach_copy_`` on the training stream copies the state into flat device buffers (one per
  dtype; by estimate ~0.75 ms of GPU time for 1.49 GB), so the update after it needs no wait of its
  own, and no live tensor is read by another stream;
- a side stream then copies each flat buffer to the slot's flat pinned host buffer in one transfer
  per dtype, while training goes on; the slot's tensors are views into those host buffers.

It costs device memory equal to the state it copies, so ``SnapshotPolicy.device_staging="auto"``
uses it only while that is at most ``AUTO_SHARE`` of the device's free memory.
"""
import torch

from .tensors import all_finite, copy_tensors

AUTO_SHARE = 0.25  # "auto": staging only while the state is at most this share of free device memory


def _layout(tensors):
    """[(dtype, offset, numel, shape)] per tensor and {dtype: total numel}: the tensors of a dtype
    lie one after another in that dtype's flat buffer."""
    totals, rows = {}, []
    for t in tensors:
        off = totals.get(t.dtype, 0)
        rows.append((t.dtype, off, t.numel(), t.shape))
        totals[t.dtype] = off + t.numel()
    return rows, totals


def _views(flats, rows):
    return [flats[dt][off:off + n].view(shape) for dt, off, n, shape in rows]


def wanted(policy, device, nbytes):
    """Whether snapshots of ``nbytes`` of state on ``device`` should go through a device copy."""
    mode = policy.device_staging
    if device.type != "cuda" or mode is False:
        return False
    if mode is True:
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= AUTO_SHARE * free


def signature(tensors):
    """What a staging layout depends on: each tensor's dtype and shape, in order."""
    return [(t.dtype, t.shape) for t in tensors]


def placement(tensors, device):
    """Which of the state's tensors go through the device buffers (the rest, on the CPU, are
    copied directly): a slot's host views are laid out for exactly this."""
    return tuple(t.device == device for t in tensors)


def slot_buffers(tensors, staging, laid, pin):
    """One slot's host buffers for the state ``tensors``: (one host tensor per state tensor,
    {dtype: flat buffer} or None, ``laid``). With ``staging``, the tensors ``laid`` (its
    ``placement``) marks get views into flat buffers laid out as its device buffers; otherwise (and
    for the others) one buffer each."""
    if staging is None:
        return [torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin) for t in tensors], None, None
    flats, views = staging.host_buffers(pin)
    views = iter(views)
    return ([next(views) if staged else torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
             for t, staged in zip(tensors, laid)], flats, laid)


class DeviceStaging:
    """Flat device buffers laid out for one list of state tensors (all on ``device``)."""

    def __init__(self, tensors, device):
        self.device = device
        self.signature = signature(tensors)
        self._rows, totals = _layout(tensors)
        self._flats = {dt: torch.empty(n, dtype=dt, device=device) for dt, n in totals.items()}
        self.views = _views(self._flats, self._rows)
        self.nbytes = sum(f.numel() * f.element_size() for f in self._flats.values())

    def host_buffers(self, pin):
        """(flat host buffers, their views per tensor) in this layout: one slot's buffers."""
        flats = {dt: torch.empty(f.numel(), dtype=dt, device="cpu", pin_memory=pin) for dt, f in self._flats.items()}
        return flats, _views(flats, self._rows)

    def copy_in(self, tensors):
        """Copies the live tensors into the device buffers, on the current stream (launches only)."""
        copy_tensors(self.views, tensors)

    def copy_out(self, host_flats):
        """Copies the device buffers to one slot's host buffers, one transfer per dtype, on the
        current stream (``non_blocking``: pinned host buffers make it asynchronous). The buffers
        are marked used by that stream, so that dropping them (the state changed shape) cannot
        hand their memory to the training stream while the copy still reads it."""
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for dt, f in self._flats.items():
            if stream is not None:
                f.record_stream(stream)
            host_flats[dt].copy_(f, non_blocking=stream is not None)

    def finite_flag(self):
        """A 0-d bool device tensor: every floating value in the buffers is finite (None: no
        floating buffer). One max |x| per dtype instead of one per tensor."""
        return all_finite(list(self._flats.values()))


class StagingChoice:
    """Which DeviceStaging, if any, one store's snapshots use. Decided once per state layout: free
    memory that changes later, or an allocation that failed, does not make a later snapshot switch
    ways (each switch reallocates every slot's pinned buffers, ~1 s/GB)."""

    def __init__(self, policy, device):
        self.policy, self.device = policy, device
        self.current = None
        self._declined = None  # the signature staging was declined for (not wanted, or no memory)

    def for_state(self, tensors):
        """The staging for this state, or None. Its tensors must be on the device, except CPU
        tensors (copied to the host directly); a tensor on another GPU means no staging."""
        if self.device.type != "cuda" or self.policy.device_staging is False:
            return None
        on_device = [t for t in tensors if t.device == self.device]
        if len(on_device) + sum(t.device.type == "cpu" for t in tensors) != len(tensors):
            return None
        sig = signature(on_device)  # once: compared with the current staging's, then the declined one's
        if self.current is not None and self.current.signature == sig:
            return self.current
        if sig == self._declined:
            return None
        self.current = None  # a state of other shapes (the first take has no optimizer state): rebuilt
        if wanted(self.policy, self.device, sum(t.numel() * t.element_size() for t in on_device)):
            try:
                self.current = DeviceStaging(on_device, self.device)
            except torch.cuda.OutOfMemoryError:
                pass  # the direct copy then
        self._declined = None if self.current is not None else sig
        return self.current
