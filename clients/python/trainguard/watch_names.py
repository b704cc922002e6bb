"""Which modules a Guard watches by default (``watch="auto"``): a model's blocks, one by one, found
through containers, stacks of blocks a few levels down and frameworks' wrappers."""
import torch


# The attribute under which a framework's wrapper holds the model it wraps, as its only child:
# DistributedDataParallel's ``module``, torch.compile's ``_orig_mod``, FSDP1's ``_fsdp_wrapped_module``.
WRAPPED = ("module", "_orig_mod", "_fsdp_wrapped_module", "_forward_module")  # DDP, torch.compile, FSDP1, Fabric


_CONTAINERS = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
_NEVER_CALLED = (torch.nn.ModuleList, torch.nn.ModuleDict)
_STACK_DEPTH = 3  # how far below a child a stack of blocks is looked for


def _has_params(module):
    return any(True for _ in module.parameters())


def _is_stack(module):
    """A container of repeated blocks: at least two children of one class that hold parameters."""
    if not isinstance(module, _CONTAINERS):
        return False
    seen = set()
    for child in module.children():
        if type(child) in seen and _has_params(child):
            return True
        seen.add(type(child))
    return False


def _holds_stack(module, depth=_STACK_DEPTH):
    return depth > 0 and any(_is_stack(c) or _holds_stack(c, depth - 1) for c in module.children())


def auto_watch(model):
    """Default watched modules: the model's children, with containers (ModuleList/Sequential/
    ModuleDict) opened one level so that each block is watched on its own (a ModuleList or ModuleDict
    found there is opened too: it is never called itself).

    A child that holds the model's stack of blocks a few levels down (transformers'
    ``GPT2LMHeadModel.transformer.h``, ``LlamaForCausalLM.model.layers``, ``BertModel.encoder.layer``, a
    LightningModule's ``self.model``) is opened too, down to that stack: its blocks are watched one by
    one, and beside them the modules with parameters on the way (embeddings, final norm), so a NaN is
    named by the block where it appeared, not by the one module that holds them all. A framework's
    wrapper (one child, named as in ``WRAPPED``) is looked through even without such a stack: its child
    is the whole model. A module whose one child has any other name and no stack below it is watched
    as it is (the user names its blocks), as is a wrapped model without children."""
    prefix = ""
    kids = list(model.named_children())
    while len(kids) == 1 and kids[0][0] in WRAPPED and any(True for _ in kids[0][1].children()):
        prefix += kids[0][0] + "."
        kids = list(kids[0][1].named_children())
    names = []
    _expand(kids, prefix, names, top=True)
    return names


def _expand(kids, prefix, names, top):
    for name, child in kids:
        path = prefix + name
        if isinstance(child, _CONTAINERS):
            _open(child, path, names)
        elif _holds_stack(child):
            _expand(list(child.named_children()), path + ".", names, top=False)
        elif top or _has_params(child):  # below the top: dropout, rotary tables, activations are not watched
            names.append(path)


def _open(container, path, names):
    """A container's children, watched one by one. A ModuleList / ModuleDict among them has no forward,
    so a hook on it would never fire: it is opened in turn (nanoGPT's ``ModuleDict(h=ModuleList(...))``
    gives ``transformer.h.0``, ``transformer.h.1``, ...)."""
    for sub, child in container.named_children():
        if isinstance(child, _NEVER_CALLED):
            _open(child, f"{path}.{sub}", names)
        else:
            names.append(f"{path}.{sub}")
