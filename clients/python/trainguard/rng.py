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
    moves on) or are the old ones twisted, up to ``MAX_TWISTS`` times (~2.5 million 32-bit draws, so
    a VAE's or a diffusion model's sampling on the CPU passes); CUDA's Philox keeps its seed and its
    offset only grows. A state this cannot tell (more draws than that on one CPU generator) counts as
    changed: whether the words are a reseed's is undecidable in less than a walk that long."""
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


MAX_TWISTS = 4096  # 20-40 us each (numpy): 0.1-0.2 s to tell a validation that did reseed


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
    import numpy as np
    words_a, words_b = np.asarray(words_a, dtype=np.uint32), np.asarray(words_b, dtype=np.uint32)
    if np.array_equal(words_a, words_b):
        return pos_b >= pos_a
    for _ in range(MAX_TWISTS):
        words_a = _twist(words_a)
        if np.array_equal(words_a, words_b):
            return True
    return False


_UPPER, _LOWER, _MATRIX = 0x80000000, 0x7fffffff, 0x9908b0df


def _twist(mt):
    """One MT19937 state regeneration (the reference generator's, shared by all three), on a uint32
    array. Word i takes words i and i+1 as they were and word i+397 as it is by then: new for i >= 227,
    so the words go in three slices of 227 (and the last one, which takes the new word 0)."""
    import numpy as np
    mt = mt.copy()
    for lo in (0, 227, 454):
        hi = min(lo + 227, 623)
        y = (mt[lo:hi] & _UPPER) | (mt[lo + 1:hi + 1] & _LOWER)
        far = mt[(np.arange(lo, hi) + 397) % 624]
        mt[lo:hi] = far ^ (y >> 1) ^ np.where(y & 1, np.uint32(_MATRIX), np.uint32(0))
    y = (int(mt[623]) & _UPPER) | (int(mt[0]) & _LOWER)
    mt[623] = int(mt[396]) ^ (y >> 1) ^ (_MATRIX if y & 1 else 0)
    return mt


def restore_rng(st):
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])
    if "numpy" in st and sys.modules.get("numpy") is not None:
        sys.modules["numpy"].random.set_state(st["numpy"])
