"""Correctness on several ranks (issue 19): a NaN on one rank skips the step on every rank, a
grad-norm disagreement is caught, a ROLLBACK is applied by every rank to the same checkpoint.
Run through multi_gpu.py (its worker calls correctness() before timing)."""
import logging
import os

import torch

from multi_gpu_common import Captured, batches, gather, make_model, optimizer_hash, weights_hash


def correctness(a, cfg, dev, rank, world):
    from trainguard import Action
    from trainguard.guard import Guard
    out = {}
    cap = Captured()
    logging.getLogger("trainguard").addHandler(cap)
    B = 2 if a.cpu_smoke else 4
    data = batches(cfg, B, dev, rank)

    def poison_hook(m, i, o):
        return o * float("nan")

    # --- a NaN in rank 1's activations at step 5
    ddp, opt = make_model(cfg, dev, rank)
    g = Guard(ddp, opt, f"mg-nan-{a.run_tag}", target=a.target, deadline=5.0,
              device_gate=True, autocast_dtype=torch.bfloat16, watch="auto")
    skipped, nan_step = [], 5
    hashes = {}
    for step in range(10):
        x, y = data[step % len(data)]
        h = None
        if rank == 1 and step == nan_step:
            h = ddp.module.h[len(ddp.module.h) // 2].mlp.register_forward_hook(poison_hook)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = ddp(x, y)
        if h is not None:
            h.remove()
        loss.backward()
        before = [p.detach().clone() for p in ddp.parameters()]
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        if all(torch.equal(b, p) for b, p in zip(before, ddp.parameters())):
            skipped.append(step)
        if step in (nan_step, 9):
            hashes[step] = weights_hash(ddp)
    g.flush(10)
    finite = all(bool(torch.isfinite(p).all()) for p in ddp.parameters())
    out["nan"] = {"injected": {"rank": 1, "step": nan_step}, "skipped_steps": skipped,
                  "hash_after_nan_step": hashes[nan_step], "hash_end": hashes[9], "weights_finite": finite,
                  "device_gated_steps": g.counters["device_gated_steps"], "skips": g.counters["skips"],
                  "gate_graph": dict(g.gated.graphs.counters)}
    g.close()

    # --- rank 1's gradients scaled after the all-reduce at step 6
    g = Guard(ddp, opt, f"mg-mismatch-{a.run_tag}", target=a.target, deadline=5.0, device_gate=True,
              autocast_dtype=torch.bfloat16, watch="auto")
    skipped, bad_step, norms, per_step = [], 6, None, []
    n_msgs = len(cap.messages)
    for step in range(10):
        x, y = data[step % len(data)]
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = ddp(x, y)
        loss.backward()
        if step == bad_step:
            if rank == 1:
                with torch.no_grad():
                    for p in ddp.parameters():
                        p.grad.mul_(1.5)
            local = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in ddp.parameters()]))
            norms = gather(float(local))  # this script's own record of which rank differed
        before = [p.detach().clone() for p in ddp.parameters()]
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        if all(torch.equal(b, p) for b, p in zip(before, ddp.parameters())):
            skipped.append(step)
        per_step.append((step, v.action.name, weights_hash(ddp), optimizer_hash(opt)))
    g.flush(10)
    msgs = [m for m in cap.messages[n_msgs:] if "grad norms differ" in m]
    out["mismatch"] = {"injected": {"rank": 1, "step": bad_step, "grad_scale": 1.5}, "skipped_steps": skipped,
                       "grad_norm_mismatches": g.counters["grad_norm_mismatches"], "per_rank_norms": norms,
                       "hash_end": weights_hash(ddp), "warnings": msgs[:2],
                       "warning_names_a_rank": any("rank 1" in m or "rank=1" in m for m in msgs),
                       "per_step": per_step, "counters": {k: v for k, v in g.counters.items() if v}}
    g.close()

    # --- ROLLBACK: checkpoints every 4 steps, then a NaN burst on rank 1
    policy = {"known_good_healthy_steps": 2, "validation_warmup_steps": 10**6, "clip_mode": "OFF",
              "max_consecutive_skips": 3, "rollback_rewarm_steps": 2, "max_rollbacks": 3}
    g = Guard(ddp, opt, f"mg-rollback-{a.run_tag}", target=a.target, deadline=5.0, device_gate=True,
              autocast_dtype=torch.bfloat16, watch="auto", policy=policy, snapshots=False, replay=False)
    ck_hash, rb = {}, []
    step, burst, rolled, it = 0, range(10, 16), False, 0
    ckdir = os.path.join(a.ckpt_dir, a.run_tag)  # one directory: rank 0 writes it (single host)
    while step < 24 and it < 40:
        it += 1
        x, y = data[step % len(data)]
        h = None
        if rank == 1 and step in burst and not rolled:
            h = ddp.module.h[0].mlp.register_forward_hook(poison_hook)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = ddp(x, y)
        if h is not None:
            h.remove()
        loss.backward()
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        if v.action == Action.ROLLBACK:
            rolled = True
            rb.append({"at_step": step, "checkpoint_step": v.rollback.checkpoint_step,
                       "files": list(v.rollback.files)[:1], "resume_step": v.resume_step,
                       "hash_after": weights_hash(ddp), "reasons": list(v.reasons)[-2:]})
        if v.resume_step is not None:
            step = v.resume_step
            continue
        if step % 4 == 3 and not rolled:
            g.flush(10)
            g.save_checkpoint(os.path.join(ckdir, f"step{step}"), step, data_position=step + 1)
            ck_hash[step] = weights_hash(ddp)
        step += 1
    g.flush(10)
    if rb:
        rb[0]["hash_of_that_checkpoint"] = ck_hash.get(rb[0]["checkpoint_step"])
    out["rollback"] = {"burst": {"rank": 1, "steps": [burst.start, burst.stop - 1]}, "rollbacks": rb,
                       "counters": {k: g.counters[k] for k in ("rollbacks", "skips", "device_gated_steps")},
                       "hash_end": weights_hash(ddp)}
    g.close()
    logging.getLogger("trainguard").removeHandler(cap)
    del ddp, opt
    return out


def judge(per_rank):
    """The pass/fail lines of the correctness part, from every rank's record."""
    r = per_rank
    nan = [x["nan"] for x in r]
    mm = [x["mismatch"] for x in r]
    rb = [x["rollback"] for x in r]
    s = nan[0]["injected"]["step"]
    b = mm[0]["injected"]["step"]
    first = [x["rollbacks"][0] if x["rollbacks"] else None for x in rb]
    return {
        "nan_skipped_on_every_rank": all(s in x["skipped_steps"] for x in nan),
        "nan_only_that_step_skipped": all(x["skipped_steps"] == [s] for x in nan),
        "nan_hashes_equal_across_ranks": len({x["hash_after_nan_step"] for x in nan}) == 1
        and len({x["hash_end"] for x in nan}) == 1,
        "mismatch_skipped_on_every_rank": all(b in x["skipped_steps"] for x in mm),
        "mismatch_counted_on_every_rank": all(x["grad_norm_mismatches"] == 1 for x in mm),
        "mismatch_hashes_equal_across_ranks": len({x["hash_end"] for x in mm}) == 1,
        "mismatch_rank_named_by_trainguard": all(x["warning_names_a_rank"] for x in mm),
        "rollback_on_every_rank": all(f is not None for f in first),
        "rollback_same_checkpoint_on_every_rank": all(f is not None for f in first)
        and len({f["checkpoint_step"] for f in first}) == 1 and len({f["resume_step"] for f in first}) == 1,
        "rollback_weights_equal_checkpoint": all(f is not None and f["hash_after"] == f["hash_of_that_checkpoint"]
                                                 for f in first),
        "rollback_hashes_equal_across_ranks_at_end": len({x["hash_end"] for x in rb}) == 1,
    }


# ------------------------------------------------------------------------------------ overhead
