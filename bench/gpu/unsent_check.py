"""Checks that frameworks.Unsent (the hf-unsent diagnostic) keeps the client on the device gate:
a tiny model on the CPU, 200 fused-AdamW steps against a running sidecar, ReportStep answered
in-process. Prints how many steps were device-gated (all of them when the canned answer's bounds
follow the reported step).

Usage: python3 bench/gpu/unsent_check.py --target unix:///tmp/tg.sock [--steps 200]
"""
import argparse
import os
import sys
import uuid

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from frameworks import Unsent  # noqa: E402  (also puts the client on sys.path)
from gpt_model import GPT, TINY  # noqa: E402
from trainguard.guard import Guard  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(**TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = Guard(model, opt, "unsent-check-" + uuid.uuid4().hex[:8], target=a.target, device_gate=True)
    g.sender._transport = Unsent(g.sender._transport)
    x = torch.randint(0, TINY["vocab"], (2, 16))
    for i in range(a.steps):
        loss = model(x, x)
        loss.backward()
        g.step(i, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    g.flush(10)
    print(f"device-gated steps: {g.counters['device_gated_steps']} of {g.counters['steps']}")
    g.close()


if __name__ == "__main__":
    main()
