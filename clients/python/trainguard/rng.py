"""The random-number state a step depends on: torch CPU and CUDA, Python's, NumPy's if loaded.
Captured to replay a step (recovery) and to check that validation left it as it found it (audit)."""
import random
import sys

import torch


def capture_rng():
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()  # seed and offset only: no device sync
    np = sys.modules.get("numpy")
    if np is not None:
        st["numpy"] = np.random.get_state()
    return st


def rng_equal(a, b):
    if not torch.equal(a["torch"], b["torch"]) or a["python"] != b["python"]:
        return False
    if "cuda" in a and ("cuda" not in b or any(not torch.equal(x, y) for x, y in zip(a["cuda"], b["cuda"]))):
        return False
    if "numpy" in a and "numpy" in b:
        x, y = a["numpy"], b["numpy"]
        if x[0] != y[0] or x[2:] != y[2:] or not (x[1] == y[1]).all():
            return False
    return True


def restore_rng(st):
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])
    if "numpy" in st and sys.modules.get("numpy") is not None:
        sys.modules["numpy"].random.set_state(st["numpy"])
