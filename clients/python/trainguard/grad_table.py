"""The gradients' sums of squares from a table of their addresses: one Triton kernel per dtype.

``torch._foreach_norm`` bakes every gradient's address into its launch, so a CUDA graph of it is only
valid while the gradients stay where they were; with ``zero_grad(set_to_none=True)`` (torch's
default) they are freed after every step and the caching allocator puts them somewhere else on the
next backward. Here the addresses are data: each step they are written into a small device table
(one host-to-device copy, ordered on the stream, no sync), and a kernel that
reads the table can sit in a CUDA graph for the whole run.

Each program sums the squares of one chunk of one gradient in float32 and writes one partial; the
partials of a parameter group are summed in a fixed order, so the result is deterministic. NaN and
Inf propagate into the sums. A gradient that is None this step has address 0 and contributes 0.
"""
import operator

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only builds, some platforms): the gate stays eager
    triton = None

CHUNK = 65536   # elements per program
BLOCK = 2048    # elements per inner iteration
SCALARS = 256   # the most loose float32 scalars (the loss, module statistics) a table reads by address

if triton is not None:
    @triton.jit
    def _sumsq_kernel(ptrs, block_tensor, block_start, sizes, partial, CHUNK: tl.constexpr,
                      BLOCK: tl.constexpr, ELEM: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        addr = tl.load(ptrs + t)
        n = tl.load(sizes + t)
        n = tl.where(addr == 0, 0, n)  # no gradient this step: nothing to read
        base = addr.to(tl.pointer_type(ELEM))
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        end = tl.minimum(n - start, CHUNK)
        for off in range(0, end, BLOCK):
            idx = start + off + tl.arange(0, BLOCK)
            x = tl.load(base + idx, mask=idx < n, other=0.0).to(tl.float32)
            acc += x * x
        tl.store(partial + pid, tl.sum(acc, axis=0))

    @triton.jit
    def _divide_kernel(ptrs, block_tensor, block_start, sizes, found, divisor, CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr, ELEM: tl.constexpr):
        # Touches the gradients only on a step that is clipped and not skipped: every other step each
        # program reads two scalars and ends. The fp32 quotient may differ from the fused kernel's
        # correctly rounded one in its last bit or two, as the divisor itself may (gate_graph).
        d = tl.load(divisor)
        if (tl.load(found) == 0.0) & (d != 1.0):
            pid = tl.program_id(0)
            t = tl.load(block_tensor + pid)
            start = tl.load(block_start + pid)
            addr = tl.load(ptrs + t)
            n = tl.load(sizes + t)
            n = tl.where(addr == 0, 0, n)
            base = addr.to(tl.pointer_type(ELEM))
            end = tl.minimum(n - start, CHUNK)
            for off in range(0, end, BLOCK):
                idx = start + off + tl.arange(0, BLOCK)
                mask = idx < n
                x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
                tl.store(base + idx, (x / d).to(ELEM), mask=mask)

    @triton.jit
    def _gather_kernel(ptrs, out, n, BLOCK: tl.constexpr):
        # out[i] = the float32 at address ptrs[i]: the step's loss and module statistics are fresh
        # tensors every step, so a graph reads them where they lie instead of a copy launched for each
        i = tl.arange(0, BLOCK)
        mask = i < n
        addr = tl.load(ptrs + i, mask=mask, other=0)
        tl.store(out + i, tl.load(addr.to(tl.pointer_type(tl.float32)), mask=mask, other=0.0), mask=mask)

    _ELEM = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
else:
    _ELEM = {}


def addressable(t, device):
    """A loose scalar the table can read by address (``upload``): a plain 1-element float32 tensor
    on ``device``."""
    return type(t) is torch.Tensor and t.dtype == torch.float32 and t.numel() == 1 and t.device == device


def available(device):
    return triton is not None and device.type == "cuda"


class _DtypeRun:
    """The gradients of one dtype: their rows of the address table and the kernel's blocks."""

    def __init__(self, offset, numels, groups_of, device, elem, ptrs):
        self.offset, self.count, self.elem = offset, len(numels), elem
        self.ptrs = ptrs  # this dtype's rows of the device address table (a view: one upload fills all)
        tensor, start, self.block_group = [], [], []
        for j, (n, grp) in enumerate(zip(numels, groups_of)):
            for s in range(0, max(n, 1), CHUNK):
                tensor.append(j)
                start.append(s)
                self.block_group.append(grp)
        self.blocks = len(tensor)
        self.block_tensor = torch.tensor(tensor, dtype=torch.int32, device=device)
        self.block_start = torch.tensor(start, dtype=torch.int64, device=device)
        self.sizes = torch.tensor(numels, dtype=torch.int64, device=device)
        self.partial = torch.zeros(self.blocks, dtype=torch.float32, device=device)


class GradTable:
    """The parameters of an optimizer's groups as address tables, per gradient dtype; ``sums()``
    launches the kernels (capturable) and returns each group's sum of squares (0-d float32);
    ``divide()`` clips the gradients in place."""

    def __init__(self, optimizer, device):
        self.device = device
        self.n_groups = len(optimizer.param_groups)
        self._groups = [list(grp["params"]) for grp in optimizer.param_groups]  # what matches() compares
        by_dtype = {}
        for gi, grp in enumerate(optimizer.param_groups):
            for p in grp["params"]:
                if p.device != device or p.dtype not in _ELEM:
                    raise ValueError(f"a parameter of dtype {p.dtype} on {p.device}")
                by_dtype.setdefault(p.dtype, []).append((p, gi))
        # the table lists the parameters dtype by dtype, so each kernel's slice of it is contiguous
        self.params = [p for rows in by_dtype.values() for p, _ in rows]
        self._numels = [p.numel() for p in self.params]
        # the gradients' addresses, then those of up to SCALARS loose scalars (``upload``, ``gather``)
        self._ptrs = torch.zeros(len(self.params) + SCALARS, dtype=torch.int64, device=device)
        self._scalar_ptrs = self._ptrs[len(self.params):]
        self.runs, start = [], 0
        for dt, rows in by_dtype.items():
            self.runs.append(_DtypeRun(start, [p.numel() for p, _ in rows], [gi for _, gi in rows], device, _ELEM[dt],
                                       self._ptrs[start:start + len(rows)]))
            start += len(rows)
        #: every gradient float32: divide() may stand in for a fused optimizer's grad_scale, whose
        #: kernel feeds the update an unrounded fp32 quotient (a bf16/fp16 gradient would be rounded first)
        self.float32_only = set(by_dtype) <= {torch.float32}
        # the CPU: Triton's interpreter (TRITON_INTERPRET=1), the tests' check of the kernel
        self._last = None  # the addresses in the device table
        self.copies = 0    # host-to-device copies of the addresses (the steps they moved on)

    def matches(self, optimizer):
        """Whether the optimizer still has the very parameters the table was built for (a replaced
        one would leave its gradient unread). Called every step, so it compares references without
        allocating anything: after torch.compile, a list of 148 fresh ints took 30 us instead of 4.5
        on the H200 host (bench/gpu/alloc_probe.py), and this check took 120 us as such a list."""
        groups = optimizer.param_groups
        return len(groups) == len(self._groups) and all(
            len(grp["params"]) == len(mine) and all(map(operator.is_, grp["params"], mine))
            for grp, mine in zip(groups, self._groups))

    def upload(self, scalars=(), checked=False):
        """Writes this step's gradient addresses, then those of ``scalars`` (1-element float32
        tensors on the device, read by ``gather``), into the device table (stream-ordered, no sync).
        False when a gradient is not one dense block starting at its address, or a scalar is not such
        a tensor: the eager kernels then measure this step. ``checked``: the caller vouches for the
        scalars (at most SCALARS, each ``addressable``), so the step does not check them again. One
        pass over the gradients: a version with five C-level passes (one per check) was no faster on
        the H200 host (docs/benchmarks.md, issue 21, seventh pass)."""
        ptrs = []
        try:
            for p, n in zip(self.params, self._numels):
                g = p.grad
                if g is None:
                    ptrs.append(0)
                elif type(g) is torch.Tensor and g.is_contiguous() and g.numel() == n:
                    ptrs.append(g.data_ptr())
                else:  # a DTensor shard, a strided layout, a parameter resized since (p.data = ...)
                    return False
        except RuntimeError:  # sparse gradients
            return False
        if not checked and (len(scalars) > SCALARS or not all(addressable(s, self.device) for s in scalars)):
            return False
        ptrs.extend(map(torch.Tensor.data_ptr, scalars))
        if ptrs != self._last:  # they moved: on nearly every step measured (zero_grad(set_to_none=True))
            self._last = ptrs
            self.copies += 1
            # From pageable memory: the driver stages the 1.2 KB before the call returns, so the
            # temporary may go at once; the copy is stream-ordered (CUDA allows a pageable copy to
            # wait for the stream; the upload's measured time shows no such wait). A pinned
            # temporary (torch.tensor(..., pin_memory=True)) held the GIL 81-117 us a step in the
            # compiled loop, this 61 (py-spy, docs/benchmarks.md, issue 21, thirteenth pass).
            self._ptrs[:len(ptrs)].copy_(torch.tensor(ptrs, dtype=torch.int64), non_blocking=True)
        return True

    def sums(self):
        """Each group's sum of squares as a list of 0-d float32 tensors (launches only)."""
        per_group = [[] for _ in range(self.n_groups)]
        for run in self.runs:
            _sumsq_kernel[(run.blocks,)](run.ptrs, run.block_tensor, run.block_start, run.sizes, run.partial,
                                         CHUNK=CHUNK, BLOCK=BLOCK, ELEM=run.elem)
            # a fixed order of contiguous slices per group: deterministic
            start = 0
            for gi in _runs_of(run.block_group):
                n = gi[1]
                per_group[gi[0]].append(run.partial[start:start + n].sum())
                start += n
        zero = torch.zeros((), dtype=torch.float32, device=self.device)
        return [torch.stack(parts).sum() if parts else zero for parts in per_group]

    def gather(self, out, n):
        """out[:n] = the ``n`` scalars of the last upload (one launch, capturable)."""
        _gather_kernel[(1,)](self._scalar_ptrs, out, n, BLOCK=max(16, triton.next_power_of_2(n)))

    def divide(self, found, divisor):
        """Divides every gradient by ``divisor`` (0-d float32, on the device) in place unless ``found``
        (0-d float32) is set or the divisor is 1: the clip a fused optimizer applies for its
        ``grad_scale``, without the write of every gradient its kernel makes whenever one is given
        (launches only, capturable). Float32 gradients only (``float32_only``)."""
        if not self.float32_only:
            raise ValueError("GradTable.divide stands in for grad_scale only when every gradient is float32")
        for run in self.runs:
            _divide_kernel[(run.blocks,)](run.ptrs, run.block_tensor, run.block_start, run.sizes, found, divisor,
                                          CHUNK=CHUNK, BLOCK=BLOCK, ELEM=run.elem)


def _runs_of(groups):
    """[(group, count)] of consecutive equal entries: the blocks of one group lie together."""
    out = []
    for g in groups:
        if out and out[-1][0] == g:
            out[-1][1] += 1
        else:
            out.append([g, 1])
    return out
