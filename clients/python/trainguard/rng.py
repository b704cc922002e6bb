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


def only_drawn_from(a, b):
    """Whether the RNG state ``b`` is ``a`` after some draws (what any code that uses randomness does,
    a DataLoader's base seed among them), not a reseed or a state set from elsewhere
    (``torch.manual_seed(42)`` in a validation: the Hallo incident). Torch's CPU generator, Python's
    and NumPy's are Mersenne twisters: drawn from, their 624 words stay as they were (the position
    moves on) or are the old ones twisted, up to ``MAX_TWISTS`` times (~10^4 draws); CUDA's Philox
    keeps its seed and its offset only grows. A state this cannot tell (more draws than that) counts
    as changed."""
    if not _mt_drawn(*_torch_mt(a["torch"]), *_torch_mt(b["torch"])):
        return False
    pa, pb = a["python"][1], b["python"][1]  # (624 words..., position)
    if a["python"][0] != b["python"][0] or not _mt_drawn(None, pa[:-1], pa[-1], None, pb[:-1], pb[-1]):
        return False
    for x, y in zip(a.get("cuda", ()), b.get("cuda", ())):
        (sx, ox), (sy, oy) = x.view(torch.int64).tolist(), y.view(torch.int64).tolist()  # (seed, offset)
        if sx != sy or oy < ox:
            return False
    if "numpy" in a and "numpy" in b:  # ('MT19937', 624 words, position, gauss cache...)
        x, y = a["numpy"], b["numpy"]
        if x[0] != y[0] or not _mt_drawn(None, x[1].tolist(), x[2], None, y[1].tolist(), y[2]):
            return False
    return True


MAX_TWISTS = 16


def _torch_mt(state):
    """(seed, 624 words, position) of torch's CPU generator state (its legacy layout: the seed, the
    words left before the next twist, ..., the 624 words as uint64). The position counts up as
    draws are made, like Python's and NumPy's."""
    raw = state.numpy().tobytes()
    import numpy as np
    seed = int(np.frombuffer(raw, np.uint64, 1, 0)[0])
    left = int(np.frombuffer(raw, np.int32, 1, 8)[0])
    words = np.frombuffer(raw, np.uint64, 624, 24).astype(np.uint32).tolist()
    return seed, words, 624 - left


def _mt_drawn(seed_a, words_a, pos_a, seed_b, words_b, pos_b):
    if seed_a != seed_b:
        return False
    words_a, words_b = list(words_a), list(words_b)
    if words_a == words_b:
        return pos_b >= pos_a
    for _ in range(MAX_TWISTS):
        words_a = _twist(words_a)
        if words_a == words_b:
            return True
    return False


def _twist(mt):
    """One MT19937 state regeneration (the reference generator's, shared by all three)."""
    mt = list(mt)
    for i in range(624):
        y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff)
        mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908b0df if y & 1 else 0)
    return mt


def restore_rng(st):
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])
    if "numpy" in st and sys.modules.get("numpy") is not None:
        sys.modules["numpy"].random.set_state(st["numpy"])
