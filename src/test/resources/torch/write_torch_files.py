"""Writes torch.save files for the Java parser tests with whatever torch this Python has.

usage: python write_torch_files.py OUT_DIR
Files: state.pt (model + AdamW state + scheduler + nested plain data + shared storage, views,
bf16/fp16/int64, a 0-dim tensor), nan_weight.pt, nan_optim.pt (one NaN each), evil.pt (a
__reduce__ that would run os.system, touching OUT_DIR/evil-ran if it ever executes).
"""
import os
import sys

import torch

out = sys.argv[1]
torch.manual_seed(0)


def training_state():
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return m, opt, {
        "model": m.state_dict(), "optimizer": opt.state_dict(), "step": 3,
        "sched": torch.optim.lr_scheduler.StepLR(opt, 2).state_dict(),
        "nested": {"a": [1, 2.5, "x", None, True], "t": (1, 2)},
        "shared_a": base, "shared_b": base[1:3], "view_t": base.t(), "strided": base[:, ::2],
        "bf16": torch.ones(3, dtype=torch.bfloat16), "fp16": torch.ones(3, dtype=torch.float16),
        "i64": torch.arange(5), "zero_dim": torch.tensor(2.5),
    }


m, opt, state = training_state()
torch.save(state, os.path.join(out, "state.pt"))

m, opt, state = training_state()
with torch.no_grad():
    m[0].weight[1, 2] = float("nan")
torch.save(state, os.path.join(out, "nan_weight.pt"))

m, opt, state = training_state()
st = opt.state_dict()["state"]
st[0]["exp_avg_sq"][0, 1] = float("inf")
torch.save(state, os.path.join(out, "nan_optim.pt"))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.path.join(out, "evil-ran"),))


torch.save({"w": torch.ones(2), "payload": Evil()}, os.path.join(out, "evil.pt"))
print(torch.__version__)

# lying.pt: the same archive with the 4x6 float storage record cut to 48 of its 96 bytes
import zipfile  # noqa: E402

src = zipfile.ZipFile(os.path.join(out, "state.pt"))
with zipfile.ZipFile(os.path.join(out, "lying.pt"), "w", zipfile.ZIP_STORED) as dst:
    for info in src.infolist():
        data = src.read(info.filename)
        if "/data/" in info.filename and len(data) == 96:
            data = data[:48]
        dst.writestr(info.filename, data)
