"""Helpers shared by multi_gpu.py and multi_gpu_checks.py: the model and batches per rank, the
weight hash that proves ranks agree, log capture, gathering per-rank results."""
import hashlib
import logging
import os
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "..", "clients", "python")]


def weights_hash(model):
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def optimizer_hash(opt):
    """sha256 of every tensor in the optimizer's state (moments, step counts), in order."""
    h = hashlib.sha256()
    for state in opt.state.values():
        for k in sorted(state):
            if torch.is_tensor(state[k]):
                h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Captured(logging.Handler):
    """Keeps the trainguard logger's warnings (what a user would see) for the result file."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def make_model(cfg, dev, rank, fsdp=False):
    from gpt_model import GPT
    torch.manual_seed(0)
    model = GPT(**cfg).to(dev)
    if fsdp:  # FSDP2: every block sharded, the root holds emb + head (the head reads the tied wte)
        from torch.distributed.fsdp import fully_shard
        for b in model.h:
            fully_shard(b)
        fully_shard(model)
        return model, torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    return ddp, opt


def batches(cfg, B, dev, rank, n=4):
    g = torch.Generator(device="cpu").manual_seed(1000 + rank)
    out = []
    for _ in range(n):
        t = torch.randint(0, cfg["vocab"], (B, cfg["seq"] + 1), generator=g).to(dev)
        out.append((t[:, :-1].contiguous(), t[:, 1:].contiguous()))
    return out


def gather(obj):
    res = [None] * dist.get_world_size()
    dist.all_gather_object(res, obj)
    return res


# ------------------------------------------------------------------------------------ correctness
