"""The device gate's per-step kernels, replayed from a CUDA graph.

Measuring a gated step (the norm of every gradient, the packed statistics) and installing the gate
(skip flag, clip divisor) is about ten kernels and, with ~150 gradients, over a millisecond of
Python and launch work per step (H200, GPT-2 small). Where the GPU has work queued, that is
hidden; where it has none (a launch-bound compiled step, a loop that reads the loss every step as
the Hugging Face Trainer does), it is added to the step. Here it is one host-to-device copy of the
addresses of the gradients, the loss and the module statistics (``grad_table``), and one graph
launch: the graph reads them all where they lie. (Copying the loss and the statistics into the
graph's inputs instead took two launches, 100-230 us a step on the H200 host after torch.compile.)

The first gated step runs the eager kernels and captures the graph (capturing runs nothing, so a
failed capture changes nothing: the gate stays eager). A step whose gradients the table cannot
address (a strided layout, a DTensor) runs the eager kernels. Without Triton, or with
``TRAINGUARD_GATE_GRAPH=0``, the gate is always eager. The norms are summed in another order than
``torch._foreach_norm``'s, so a clip divisor may differ from the eager one in its last bits; an
unclipped step divides by exactly 1.0 either way.
"""
import logging
import os

import torch

from . import grad_table
from .measure import skip_flag

log = logging.getLogger("trainguard")


# How a graph gets the step's loss: read where it lies (a plain 1-element float32 tensor on the
# device), copied into its input (another tensor, a tensor subclass), or filled in (None or a number)
LOSS_READ, LOSS_COPIED, LOSS_FILLED = "read", "copied", "filled"


class _Captured:
    """One graph and its fixed loss input and output."""

    def __init__(self, graph, loss, stats):
        self.graph, self.loss, self.stats = graph, loss, stats


class GateGraphs:
    """Measures a single-rank gated step and installs its gate from a CUDA graph where it can,
    else eagerly (``StepMeter.on_device`` + ``DeviceGate.install``)."""

    KEEP = 4  # graphs kept, one per (number of module statistics, how the loss gets in)
    RETRY_STEPS = 64  # eager steps between capture attempts while a gradient cannot be addressed

    def __init__(self, meter, gate, optimizer, device):
        self.meter, self.gate, self.optimizer, self.device = meter, gate, optimizer, device
        self.enabled = grad_table.available(device) and os.environ.get("TRAINGUARD_GATE_GRAPH", "1") != "0"
        self._table = None
        self._graphs = {}        # (n_mods, LOSS_*) -> _Captured
        self._threshold = None   # device 0-d float32: the clip threshold the graphs divide by
        self._threshold_value = None
        self._stream = None
        self._divide = None      # a graph of the table's in-place clip (grad_table.divide)
        self._retry_in = 0       # steps until capturing is tried again after unaddressable gradients
        self.counters = {"captures": 0, "replays": 0, "eager": 0}

    @property
    def address_uploads(self):
        """Steps whose addresses had moved since the last step and were copied to the device (nearly
        all: the loss is a fresh tensor every step)."""
        return self._table.copies if self._table is not None else 0

    def measure_and_install(self, loss, threshold, taken=None):
        """(stats, n_groups, module_names, clip), the gate installed for ``threshold``. ``clip``: None,
        or what the caller must run, once, before the optimizer steps: the clip divides the gradients
        in place (grad_table.divide, or DeviceGate's with ``clip_in_place``) instead of through the
        optimizer's ``grad_scale``. It is left to
        the caller because a measurement taken when backward ends may be superseded by a later
        backward (gradient accumulation), which must not add to clipped gradients. ``taken``: the
        watch's (names, stats) when the caller already took them."""
        names, mods = taken if taken is not None else self.meter.take_watch()
        key = self._key(loss, len(mods))
        cap = self._graphs.get(key) if key is not None else None
        # the scalars are vouched for: _key checked the loss and the number of statistics, and the
        # watch makes its statistics 0-d float32 tensors on the device (stats.ModuleWatch)
        if cap is not None and self._table.upload(self._scalars(key, loss, mods), checked=True):
            self._load(cap, key, loss, threshold)
            cap.graph.replay()
            by_table = threshold > 0 and self._divide is not None
            clip = self.gate.point(threshold, divisor=not by_table)
            self.counters["replays"] += 1
            return cap.stats, self._table.n_groups, names, (self._divide.replay if by_table else clip)
        stats, total, ng, names = self.meter.on_device(loss, taken=(names, mods))
        clip = self.gate.install(stats, total, threshold, head=2 + ng)
        self.counters["eager"] += 1
        if key is not None and cap is None:
            self._capture(key, self._scalars(key, loss, mods))
        return stats, ng, names, clip

    def _key(self, loss, n_mods):
        """What a graph is captured for, (number of module statistics, LOSS_*); None when this step
        cannot use one (graphs off, the loss on another device, more statistics than the table reads)."""
        if not self.enabled or (torch.is_tensor(loss) and loss.device != self.device) or n_mods >= grad_table.SCALARS:
            return None
        if self._table is not None and not self._table.matches(self.optimizer):
            self._table, self._graphs, self._divide = None, {}, None  # the optimizer's parameters changed: build afresh
        if not torch.is_tensor(loss):
            return n_mods, LOSS_FILLED
        return n_mods, (LOSS_READ if grad_table.addressable(loss, self.device) else LOSS_COPIED)

    @staticmethod
    def _scalars(key, loss, mods):
        """What the graph reads by address: the loss (when it is read) and the module statistics."""
        return [loss] + mods if key[1] == LOSS_READ else mods

    def _load(self, cap, key, loss, threshold):
        if key[1] == LOSS_COPIED:
            cap.loss.copy_(loss.detach().reshape(1))
        elif key[1] == LOSS_FILLED:
            cap.loss.fill_(0.0 if loss is None else float(loss))
        value = float(threshold) if threshold > 0 else 1.0  # no clipping: the divisor is not used
        if value != self._threshold_value:
            self._threshold.fill_(value)  # one fill when the policy's threshold changes
            self._threshold_value = value

    def _capture(self, key, scalars):
        if len(self._graphs) >= self.KEEP:
            return
        if self._retry_in:  # the gradients could not be addressed lately: the pointer walk would be wasted
            self._retry_in -= 1
            return
        n_mods = key[0]
        try:
            if self._table is None:
                self._table = grad_table.GradTable(self.optimizer, self.device)
                self._threshold = torch.ones((), dtype=torch.float32, device=self.device)
                self._threshold_value = 1.0
                self._stream = torch.cuda.Stream(device=self.device)
            table = self._table
            if not table.upload(scalars):
                self._retry_in = self.RETRY_STEPS  # a strided or DTensor gradient: eager for a while
                return
            # the loss and the module statistics side by side, read where they lie (or the loss put in)
            inputs = torch.zeros(1 + n_mods, dtype=torch.float32, device=self.device)
            in_loss, in_mods = inputs[:1], inputs[1:]  # in_mods empty without statistics
            read_into = inputs if key[1] == LOSS_READ else inputs[1:]
            table.sums()  # compiles and loads the kernels outside the capture
            if scalars:
                table.gather(read_into, len(scalars))
            found, scale = self.gate.buffers()
            if self._divide is None and table.float32_only:
                self._divide = self._capture_divide(table, found, scale)
            graph = torch.cuda.CUDAGraph()
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                # thread_local: the sender thread may wait on a CUDA event meanwhile
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    if scalars:
                        table.gather(read_into, len(scalars))
                    sq = torch.stack(table.sums())
                    per_group = torch.sqrt(sq)
                    total = torch.sqrt(sq.sum())
                    stats = torch.cat([in_loss, total.reshape(1), per_group, in_mods])
                    skip_flag(stats, 2 + per_group.numel(), out=found)
                    torch.div(torch.maximum(total, self._threshold), self._threshold, out=scale)
                finally:
                    graph.capture_end()
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        except Exception as e:  # no Triton kernel, a driver or allocator that refuses capture: eager from now on
            self.enabled = False
            self._graphs, self._divide = {}, None
            log.info("trainguard: the device gate cannot run from a CUDA graph (%s: %s); it stays eager",
                     type(e).__name__, e)
            return
        self.counters["captures"] += 1
        self._graphs[key] = _Captured(graph, in_loss, stats)

    def _capture_divide(self, table, found, divisor):
        """A graph of the table's in-place clip by ``divisor`` unless ``found`` is set."""
        table.divide(self.gate.flag(True), divisor)  # compiles the kernel: a set flag leaves the gradients alone
        graph = torch.cuda.CUDAGraph()
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                table.divide(found, divisor)
            finally:
                graph.capture_end()
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return graph
