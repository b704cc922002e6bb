"""A minimal guarded PyTorch loop. Run: python examples/minimal_loop.py [--target 127.0.0.1:7474]
(without --target it starts the sidecar jar itself: $TRAINGUARD_JAR or target/quarkus-app)."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
import torch  # noqa: E402

import trainguard  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", help="sidecar address; default: start the jar")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--run", default=f"minimal-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                    help="run id; unique by default, so re-running against a running sidecar works")
    args = ap.parse_args()
    sidecar = None if args.target else trainguard.Sidecar().start()
    target = args.target or sidecar.target

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    guard = trainguard.Guard(model, optimizer, run=args.run, target=target)    # 1

    for step in range(args.steps):
        x = torch.randn(64, 8)
        y = x.sum(1, keepdim=True)
        if step == 50:
            y[0] = float("nan")  # a bad batch
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        verdict = guard.step(step, loss)                                         # 2
        guard.optimizer_step()                                                   # 3
        optimizer.zero_grad()
        if verdict.action != trainguard.Action.APPLY:
            print(f"step {step}: {verdict.action.name} {'; '.join(verdict.reasons)}")
    guard.close()
    print(f"done: loss {loss.item():.4f}, counters {guard.counters}")
    if sidecar:
        sidecar.stop()


if __name__ == "__main__":
    main()
