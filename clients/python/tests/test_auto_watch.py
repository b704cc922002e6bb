"""Which modules ``watch="auto"`` watches, against the real sidecar jar: a model inside a framework's
wrapper (DDP's ``module``) or held under a name of the user's (a LightningModule's ``self.model``) is
watched down to its blocks, so a NaN is named by the block where it appeared. The transformers
models are in test_hf.py."""
from torch import nn

from trainguard import Action
from trainguard.guard import Guard
from trainguard.watch_names import auto_watch
from models import make, train


class Wrapper(nn.Module):
    """A framework's wrapper, holding the model as DistributedDataParallel does: its one child ``module``."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, x):
        return self.module(x)


class Holder(nn.Module):
    """A LightningModule's shape: the network under a name of the user's, beside a parameterless loss."""

    def __init__(self, model):
        super().__init__()
        self.net = model
        self.loss_fn = nn.MSELoss()

    def forward(self, x):
        return self.net(x)


def nan_in_block_1(sidecar, run, outer, model, opt):
    """One step of ``outer`` (which holds ``model``) with a NaN made inside ``model.blocks[1]``:
    the names watched and the verdict."""
    g = Guard(outer, opt, run, target=sidecar.target, deadline=5.0)
    h = model.blocks[1][0].register_forward_hook(lambda mod, inp, out: out * float("nan"))
    v = train(g, outer, opt, 1)[0]
    h.remove()
    g.close()
    return g.watch.names, v


def test_a_wrapped_model_is_watched_block_by_block(sidecar):
    # Prevents: a DDP (torch.compile, FSDP1) run naming only "module", the whole model, as where its NaN appeared.
    model, opt = make()
    names, v = nan_in_block_1(sidecar, "nan-in-wrapped", Wrapper(Wrapper(model)), model, opt)
    assert names == [f"module.module.{n}" for n in ("inp", "blocks.0", "blocks.1", "out")]
    assert v.action == Action.SKIP and v.first_nonfinite_module == "module.module.blocks.1"
    assert auto_watch(Wrapper(nn.Linear(2, 2))) == ["module"]  # a wrapped leaf is watched, not dropped
    fabric = nn.Module()  # Lightning Fabric's _FabricModule holds the model as _forward_module
    fabric._forward_module = model
    assert auto_watch(fabric) == [f"_forward_module.{n}" for n in ("inp", "blocks.0", "blocks.1", "out")]


def test_a_model_held_under_another_name_is_watched_down_to_its_blocks(sidecar):
    # Prevents: "net" (the whole model) named as where a NaN appeared, for any model not held as
    # DDP's "module" (a LightningModule's self.model, transformers' GPT2LMHeadModel.transformer).
    model, opt = make()
    names, v = nan_in_block_1(sidecar, "nan-in-held", Holder(model), model, opt)
    assert names == ["net.inp", "net.blocks.0", "net.blocks.1", "net.out", "loss_fn"]
    assert v.action == Action.SKIP and v.first_nonfinite_module == "net.blocks.1"
    # no stack of blocks below: the module is watched as it is
    assert auto_watch(Holder(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))) == ["net.0", "net.1", "loss_fn"]
    assert auto_watch(Holder(nn.LSTM(2, 2))) == ["net", "loss_fn"]


class NanoGPTLayout(nn.Module):
    """karpathy/nanoGPT's layout: ``transformer = ModuleDict(wte, drop, h=ModuleList([...]), ln_f)``,
    whose forward indexes the dict and loops over ``h`` (neither container is ever called)."""

    def __init__(self, model):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(inp=model.inp, drop=nn.Dropout(0.0), h=model.blocks))
        self.head = model.out

    def forward(self, x):
        t = self.transformer
        x = t.drop(t.inp(x))
        for b in t.h:
            x = b(x)
        return self.head(x)


def test_blocks_held_in_a_module_dict_are_watched_one_by_one(sidecar):
    # Prevents: nanoGPT's "transformer.h" (a ModuleList, whose hooks never fire) watched in place of its
    # blocks, and a NaN made in h.1 named after the next module that ran.
    model, opt = make()
    names, v = nan_in_block_1(sidecar, "nan-in-module-dict", NanoGPTLayout(model), model, opt)
    assert names == ["transformer.inp", "transformer.drop", "transformer.h.0", "transformer.h.1", "head"]
    assert v.action == Action.SKIP and v.first_nonfinite_module == "transformer.h.1"
