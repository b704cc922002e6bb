"""Why bench/gpu/checks/test_forward_writes_on_cuda.py turns on deterministic kernels: two unguarded runs of
QueueNet (an enqueue by index_put with host indices) differ from each other on CUDA, and equal each other,
and the guarded run, under torch.use_deterministic_algorithms(True) (2026-12-02, H200).
Usage (after source bench/gpu/sidecar-up.sh): CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 bench/gpu/queue_determinism_probe.py"""
import os, sys, time, torch
sys.path.insert(0, "clients/python"); sys.path.insert(0, "clients/python/tests")
from trainguard.guard import Guard
from trainguard import running_stats
from models import batch
from test_running_stats import QueueNet
TARGET = os.environ.get("TG_TARGET", "unix:///tmp/tg.sock")
seen = []
orig = running_stats.RunningStats.settle
def settle(self, skip):
    seen.append((float(skip) if torch.is_tensor(skip) else skip, len(self._groups), bool(self._writes)))
    return orig(self, skip)
running_stats.RunningStats.settle = settle
def run(guarded, gate=True, snaps=False):
    model = QueueNet().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, f"dbg-{time.time_ns()}", target=TARGET, device_gate=gate, deadline=5.0, replay=False, snapshots=snaps,
              policy={"clip_mode": "OFF"}) if guarded else None
    trace = []
    for step in range(12):
        x = batch(step)[0].cuda()
        if step == 5:
            if g is None:
                trace.append(None); continue
            x = x * float("nan")
        loss = model(x); loss.backward()
        if g is not None:
            v = g.step(step, loss); g.optimizer_step()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        trace.append((model.queue.clone(), model.ptr.clone(), model.net.weight.detach().clone()))
    if g: g.close()
    return trace
def cmp(a, b, label):
    print(label, [round(float((p[0]-q[0]).abs().max()), 4) if p is not None else None for p, q in zip(a, b)])
u1, u2 = run(False), run(False)
cmp(u1, u2, "unguarded vs unguarded")
g1, g2 = run(True, False, False), run(True, False, False)
cmp(g1, g2, "guarded host vs guarded host")
cmp(u1, g1, "unguarded vs guarded host")
torch.use_deterministic_algorithms(True)
u3, g3 = run(False), run(True, False, False)
cmp(u3, g3, "deterministic algorithms: unguarded vs guarded")
