"""The GPT-2-small-sized LM every GPU benchmark here trains (overhead.py, frameworks.py,
recovery.py, multi_gpu.py): nanoGPT's layout, with the loss computed inside the head module."""
import torch
import torch.nn as nn
import torch.nn.functional as F

GPT2_SMALL = dict(vocab=50257, seq=1024, d=768, layers=12, heads=12)   # 124M parameters
TINY = dict(vocab=1000, seq=64, d=64, layers=2, heads=4)               # --tiny: a CPU smoke run


class Embeddings(nn.Module):
    def __init__(self, vocab, seq, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.wte(idx) + self.wpe(pos)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, d))


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    """Final LayerNorm + LM head (tied to wte) + cross-entropy: its output is the loss (as in
    nanoGPT's forward(idx, targets)), so watching the head costs no pass over the logits."""

    def __init__(self, d, wte):
        super().__init__()
        self.ln_f = nn.LayerNorm(d)
        self.wte = [wte]  # tied weight, not a submodule

    def forward(self, x, targets):
        logits = F.linear(self.ln_f(x), self.wte[0].weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class GPT(nn.Module):
    def __init__(self, vocab=50257, seq=1024, d=768, layers=12, heads=12):
        super().__init__()
        self.emb = Embeddings(vocab, seq, d)
        self.h = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.head = Head(d, self.emb.wte)

    def forward(self, idx, targets):
        x = self.emb(idx)
        for b in self.h:
            x = b(x)
        return self.head(x, targets)


def train_compiled(dev, model=None, opt=None, steps=3, batch=8):
    """A few torch.compile'd training steps of ``model`` (default a fresh GPT-2 small with fused
    AdamW) at ``batch``: leaves the host's Python as a compiled loop leaves it (the probes time
    their loops before and after this)."""
    if model is None:
        model = GPT(**GPT2_SMALL).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    fwd = torch.compile(model)
    x = torch.randint(0, GPT2_SMALL["vocab"], (batch, GPT2_SMALL["seq"] + 1), device=dev)
    for _ in range(steps):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return model, opt
