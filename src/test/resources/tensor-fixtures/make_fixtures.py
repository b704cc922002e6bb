"""Regenerates the DJL-read fixtures of DjlTensorsTest (run with Debian's python3-torch/numpy):
   /usr/bin/python3 src/test/resources/tensor-fixtures/make_fixtures.py"""
import os
import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        self.scale = torch.nn.Parameter(torch.tensor([1.0, -7.5]))

    def forward(self, x):
        return self.body(x) * self.scale


torch.manual_seed(0)
net = Net()
torch.jit.script(net).save(os.path.join(here, "clean.torchscript.pt"))
with torch.no_grad():
    net.body[2].weight[1, 2] = float("nan")   # flat index 5 of a [2, 3] weight
torch.jit.script(net).save(os.path.join(here, "nan.torchscript.pt"))
np.savez(os.path.join(here, "two.npz"),
         good=np.array([1.0, -2.0, 3.0], dtype=np.float32),
         bad=np.array([0.5, np.inf, -np.inf, 4.0], dtype=np.float32))
