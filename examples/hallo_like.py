"""A small Hallo-like trainer that reproduces both Hallo failures (examples/README.md), with and without trainguard.

  --bug validation : validation re-patches the training model's attention forward (as the
                     inference pipeline did for classifier-free guidance) and reseeds the RNG.
  --bug fp16       : every trainable module cast to fp16, AdamW eps=1e-8, no fp32 master weights.
  --no-guard       : the same run without trainguard, to see the damage.
  --preflight warn : let the fp16 run start despite the pre-flight audit (default: the sidecar's).

python examples/hallo_like.py --bug validation
python examples/hallo_like.py --bug fp16 --preflight warn
"""
import argparse
import os
import time
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
import torch  # noqa: E402
from torch import nn  # noqa: E402

import trainguard  # noqa: E402
from trainguard.guard import NonFiniteUpdate  # noqa: E402


class ImageProj(nn.Module):
    """face embedding -> a few context tokens (Hallo's `imageproj`)."""

    def __init__(self, emb=32, dim=32, tokens=4):
        super().__init__()
        self.proj = nn.Linear(emb, dim * tokens)
        self.norm = nn.LayerNorm(dim)
        self.tokens, self.dim = tokens, dim

    def forward(self, e):
        return self.norm(self.proj(e).reshape(e.shape[0], self.tokens, self.dim))


class Attention(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, ctx):
        a = torch.softmax(self.q(x) @ self.k(ctx).transpose(1, 2) / x.shape[-1] ** 0.5, -1)
        return x + self.o(a @ self.v(ctx))


class Block(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.attn = Attention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x, ctx):
        x = self.attn(x, ctx)
        return x + self.ff(x)


class TinyHallo(nn.Module):
    def __init__(self, dim=32, n_blocks=2):
        super().__init__()
        self.imageproj = ImageProj(dim=dim)
        self.inp = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(n_blocks)])
        self.out = nn.Linear(dim, dim)

    def forward(self, latents, face_emb):
        ctx = self.imageproj(face_emb)
        x = self.inp(latents)
        for b in self.blocks:
            x = b(x, ctx)
        return self.out(x)


def data(step, dtype):
    g = torch.Generator().manual_seed(step)
    lat, emb = torch.randn(8, 6, 32, generator=g), torch.randn(8, 32, generator=g)
    target = lat.roll(1, -1) * 0.5 + emb[:, None, :] * 0.1
    return lat.to(dtype), emb.to(dtype), target


def cfg_patch(block):
    """What the inference pipeline did: patch attention forward for classifier-free guidance, never undo."""
    attn = block.attn
    orig = attn.forward

    def cfg_forward(x, ctx):
        uncond, cond = x.chunk(2) if x.shape[0] % 2 == 0 else (x, x)  # wrong for training batches
        return torch.cat([orig(uncond, torch.zeros_like(ctx[:uncond.shape[0]])), orig(cond, ctx[-cond.shape[0]:])])
    attn.forward = cfg_forward


def log_validation(model, step):
    model.eval()
    for b in model.blocks:
        cfg_patch(b)
    torch.manual_seed(42)  # the pipeline's generator reseeded the global RNG
    with torch.no_grad():
        lat, emb, tgt = data(10_000 + step, next(model.parameters()).dtype)
        return float(nn.functional.mse_loss(model(lat, emb).float(), tgt))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bug", choices=["validation", "fp16", "none"], default="none")
    ap.add_argument("--no-guard", action="store_true")
    ap.add_argument("--target")
    ap.add_argument("--run", default=None, help="run id (default: a unique one, so re-runs work)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--preflight", choices=["refuse", "warn"], default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = TinyHallo()
    dtype = torch.float32
    if args.bug == "fp16":
        model = model.half()  # mixed_precision "no", every trainable module in fp16
        dtype = torch.float16
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8)

    guard, sidecar = None, None
    if not args.no_guard:
        sidecar = None if args.target else trainguard.Sidecar().start()
        policy = {"validation_warmup_steps": 5, "validation_interval_steps": 5}
        if args.preflight:
            policy["preflight_mode"] = args.preflight.upper()
        try:
            run = args.run or f"hallo-{args.bug}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # unique: re-runs work
            guard = trainguard.Guard(model, opt, run=run, target=args.target or sidecar.target,
                                     policy=policy, watch=["imageproj", "inp", "blocks.0", "blocks.1", "out"])
        except trainguard.RunRefused as e:
            print(f"REFUSED before step 1: {e}")
            return 2
        for f in guard.findings:
            print("pre-flight:", *f)
    try:
        for step in range(args.steps):
            lat, emb, tgt = data(step, dtype)
            loss = nn.functional.mse_loss(model(lat, emb).float(), tgt)
            loss.backward()
            if guard:
                v = guard.step(step, loss)
                guard.optimizer_step()
            else:
                opt.step()
            opt.zero_grad()
            finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            print(f"step {step:3d} loss {loss.item():.4f} weights finite: {finite}")
            if args.bug == "validation" and step > 0 and step % 5 == 0:
                if guard:
                    with guard.validation(model, step=step) as val:
                        if val.allowed:
                            val.loss = log_validation(model, step)
                    if val.allowed and val.audit["details"]:
                        print(f"  validation at step {step} changed the model: {val.audit['details'][:4]} "
                              f"-> restored: {val.restored}")
                else:
                    log_validation(model, step)
                    model.train()
                    print(f"  validation at step {step}: blocks.0.attn.forward is now "
                          f"{'PATCHED' if 'forward' in model.blocks[0].attn.__dict__ else 'original'}")
    except NonFiniteUpdate as e:
        print(f"STOPPED: {e}")
        return 3
    except trainguard.TrainingHalted as e:
        print(f"HALTED: {e}")
        return 4
    finally:
        if guard:
            guard.close()
        if sidecar:
            sidecar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
