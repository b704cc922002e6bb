"""Several ranks (issue 19): the GPT-2-small-sized LM of gpt_model.py under DDP, guarded, on N GPUs.

One process per rank (torch.multiprocessing spawn), NCCL on CUDA, gloo with --cpu-smoke.

Correctness (first, on fresh guards, each rank talking to the same sidecar):
  nan        a NaN injected into rank 1's activations (one block's MLP output) at one step: the step
             is skipped on every rank (weights unchanged on each), and the weights hash the same on
             every rank afterwards (sha256 of all parameters, per rank)
  mismatch   rank 1's gradients scaled by 1.5 after DDP's all-reduce (a silent-data-corruption
             stand-in): the ranks' norms disagree, the step is skipped on every rank and counted
             in counters["grad_norm_mismatches"]; the per-rank norms are all_gathered by this script
             to show which rank differed (trainguard's SUM collective itself cannot name it)
  rollback   checkpoints every 4 steps (guard.save_checkpoint: rank 0 writes, every rank records), then a NaN
             burst on rank 1 until the sidecar orders ROLLBACK: every rank applies it, to the same
             checkpoint step, and its weights then hash the same as that checkpoint's weights

Overhead (paired interleaved rounds, the method of overhead.py and GPU-OVERHEAD.md): per batch size,
  baseline   DDP fwd/bwd under bf16 autocast, fused AdamW, zero_grad
  tg         trainguard as shipped: the multi-rank device gate (one in-stream all_reduce per step for
             the skip flag, the global norm and the cross-rank consistency check), per-block
             provenance (emb, h.0..h.11, head), verdict_lag=1
  tg_nosnap  the same without in-memory snapshots (what they cost)
  tg_nowatch the same without module watch hooks (what the per-block provenance costs)
  naive      clip_grad_norm_(1.0) + one .item() host sync per step
  scaler     fp16 autocast + GradScaler (fused AdamW)
ms/step is the slowest rank's (all_reduce MAX); ratio = variant / mean of the baselines around it.

--fsdp: the overhead part only, under FSDP2 (fully_shard per block + root), a ~1.2B-parameter GPT
(d 2048, 22 layers); the guard's grad_sync is then "sharded" (global norm = sqrt of the summed squares).

Usage (GPU):  python multi_gpu.py --target unix:///tmp/tg.sock --ckpt-dir /tmp/mg-ckpt --out res.json
      (CPU):  python multi_gpu.py --cpu-smoke --target 127.0.0.1:PORT --ckpt-dir DIR  (tiny model, 2 gloo ranks)
The sidecar must accept --ckpt-dir as a checkpoint root (trainguard.checkpoint.roots).
"""
import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multi_gpu_common import batches, gather, make_model, weights_hash
from multi_gpu_checks import correctness, judge


def overhead(a, cfg, dev, rank, B):
    from trainguard.guard import Guard
    cuda = dev.type == "cuda"
    ddp, opt = make_model(cfg, dev, rank, fsdp=a.fsdp)
    data = batches(cfg, B, dev, rank)
    variants = a.variants.split(",")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    guards, step_no = {}, {}

    def guard(name):
        if name not in guards:
            # tg_nosnap: without in-memory snapshots; tg_nowatch: without module watch hooks (what each costs)
            g = Guard(ddp, opt, f"mg-bench-{name}-b{B}-{a.run_tag}", target=a.target, deadline=2.0, device_gate=True,
                      autocast_dtype=torch.bfloat16, watch=[] if name == "tg_nowatch" else "auto",
                      verdict_lag=1, snapshots=name != "tg_nosnap")  # FSDP2: each rank snapshots its local shards
            if not (g.device_gate and g._multi_gate):
                raise SystemExit(f"{name}: the multi-rank device gate is off")
            g.pause()
            guards[name], step_no[name] = g, 0
        return guards[name]

    scaler = torch.amp.GradScaler(dev.type) if "scaler" in variants else None

    def run(name, n):
        g = guard(name) if name.startswith("tg") else None
        if g is not None:
            g.resume()
        sync()
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(n):
            x, y = data[i % len(data)]
            if name == "scaler":
                with torch.autocast(dev.type, dtype=torch.float16):
                    loss = ddp(x, y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                continue
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = ddp(x, y)
            loss.backward()
            if g is not None:
                g.step(step_no[name], loss)
                step_no[name] += 1
                g.optimizer_step()
            elif name == "naive":
                norm = torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0, foreach=True)
                if not math.isfinite(norm.item()):  # the one host sync
                    opt.zero_grad(set_to_none=True)
                    continue
                opt.step()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        dt = torch.tensor([(time.perf_counter() - t0) * 1000.0 / n], dtype=torch.float64, device=dev)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the slowest rank's ms/step
        if g is not None:
            g.pause()
        return float(dt.item())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ["baseline"] + variants:
            run(name, a.warmup)
        rows = {v: [] for v in variants}
        base_ms = []
        for r in range(a.rounds):
            before = run("baseline", a.steps)
            base_ms.append(before)
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                t = run(v, a.steps)
                after = run("baseline", a.steps)
                base_ms.append(after)
                rows[v].append({"ms": t, "base_before": before, "base_after": after, "ratio": t / ((before + after) / 2)})
                before = after
            if rank == 0:
                print(f"  batch {B} round {r + 1}/{a.rounds}: " + ", ".join(
                    f"{v} {rows[v][-1]['ratio']:.3f}" for v in variants), flush=True)
    res = {"baseline_ms_median": statistics.median(base_ms), "baseline_ms_min": min(base_ms),
           "baseline_ms_max": max(base_ms), "variants": {}}
    for v in variants:
        rs = [x["ratio"] for x in rows[v]]
        res["variants"][v] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs),
                              "ms_median": statistics.median(x["ms"] for x in rows[v]), "rounds": rows[v]}
    for name, g in guards.items():
        g.flush(10)
        res[f"{name}_counters"] = dict(g.counters)
        res[f"{name}_gate_graph"] = dict(g.gated.graphs.counters)  # replays: measured from the CUDA graph
        store = g.recovery.store
        res[f"{name}_snapshots"] = dict(store.stats) if store is not None else None  # taken, last take's host time
        ring = g.recovery.ring
        if ring is not None:  # the pace the ranks agreed on: a snapshot's measured cost, the steps between two
            usual = ring.pace.usual()
            res[f"{name}_snapshot_pace"] = {"cost_ms": ring.pace.cost_s * 1e3, "usual_step_ms": usual and usual * 1e3,
                                            "agreed_steps": ring.agreed_steps}
        g.close()
    res["weights_hash"] = weights_hash(ddp) if not a.fsdp else None  # FSDP: each rank holds its shard
    del ddp, opt, data
    if cuda:
        torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------ per rank

def worker(rank, world, port, a, out_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = not a.cpu_smoke
    if cuda:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)
        dev = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            device_id=dev if cuda else None)
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(message)s")
    cfg = dict(vocab=512, seq=32, d=64, layers=2, heads=4) if a.cpu_smoke else \
        dict(vocab=50257, seq=1024, d=768, layers=12, heads=12)
    if a.fsdp and not a.cpu_smoke:  # ~1.2B parameters: sharding matters
        cfg = dict(vocab=50257, seq=1024, d=2048, layers=22, heads=16)
    info = {"torch": torch.__version__, "python": platform.python_version(), "world_size": world,
            "backend": dist.get_backend(), "gpu": torch.cuda.get_device_name(rank) if cuda else platform.processor(),
            "config": cfg, "fsdp": a.fsdp, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": a.rounds, "steps": a.steps}
    t0 = time.time()
    if not a.skip_correctness:
        rec = correctness(a, cfg, dev, rank, world)
        allrec = gather(rec)
        if rank == 0:
            info["correctness"] = {"per_rank": allrec, "checks": judge(allrec), "seconds": round(time.time() - t0, 1)}
            print("correctness:", json.dumps(info["correctness"]["checks"], indent=1), flush=True)
    info["overhead"] = {}
    for B in a.batch:
        t1 = time.time()
        res = overhead(a, cfg, dev, rank, B)
        hashes = gather(res.pop("weights_hash"))
        if rank == 0:
            res["weights_hash_equal_across_ranks"] = None if a.fsdp else len(set(hashes)) == 1
            res["seconds"] = round(time.time() - t1, 1)
            info["overhead"][f"batch{B}"] = res
            print(f"\nbatch {B}/GPU x {world}: baseline {res['baseline_ms_median']:.2f} ms/step "
                  f"[{res['baseline_ms_min']:.2f}, {res['baseline_ms_max']:.2f}]")
            print(f"  {'variant':10s} {'median':>7s} {'min':>7s} {'max':>7s} {'ms/step':>8s}")
            for v, s in res["variants"].items():
                print(f"  {v:10s} {s['median']:7.3f} {s['min']:7.3f} {s['max']:7.3f} {s['ms_median']:8.2f}", flush=True)
    if rank == 0 and out_file:
        with open(out_file, "w") as f:
            json.dump(info, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def wait_for_grpc(target, timeout=120.0):
    """Health can be ready before the first gRPC call is served (JVM warm-up): an unanswered OpenRun
    would start every rank offline."""
    import grpc
    from trainguard.transport import Transport
    from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
    end = time.monotonic() + timeout
    while True:
        t = Transport(target, deadline=5.0)
        try:
            t.call("GetRun", pb.GetRunRequest(run_id="__warmup__"))
            return
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return
            if time.monotonic() > end:
                raise SystemExit(f"no gRPC answer from {target}: {e}")
            time.sleep(0.5)
        finally:
            t.close()


VARIANTS = ("tg", "tg_nosnap", "tg_nowatch", "naive", "scaler")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--nproc", type=int, default=None, help="ranks (default: every visible GPU; 2 with --cpu-smoke)")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--variants", default="tg,naive,scaler")
    ap.add_argument("--ckpt-dir", default="/tmp/mg-ckpt")
    ap.add_argument("--cpu-smoke", action="store_true", help="2 gloo ranks on the CPU, tiny model (no timing value)")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--fsdp", action="store_true", help="overhead under FSDP2 (fully_shard) with a ~1.2B model; "
                    "no correctness part (use --variants tg,naive)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    unknown = sorted(set(a.variants.split(",")) - set(VARIANTS))
    if unknown:  # a misspelt tg_* variant would otherwise run as plain tg under its own label
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    a.run_tag = f"{os.getpid()}"
    if a.fsdp:
        a.skip_correctness = True
    world = a.nproc or (2 if a.cpu_smoke else torch.cuda.device_count())
    if world < 2:
        raise SystemExit(f"needs at least 2 ranks (found {world} GPUs); use --cpu-smoke on a machine without GPUs")
    from trainguard.testing import free_port
    wait_for_grpc(a.target)
    mp.spawn(worker, args=(world, free_port(), a, a.out), nprocs=world, join=True)


if __name__ == "__main__":
    main()
