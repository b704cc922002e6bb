"""tg1, the sidecar's default content checksum, recomputed in Python (numpy).

The sidecar reports a tg1 checksum per tensor and per checkpoint file (``"tg1:<16 hex>"``, REST
``/runs/{run}`` -> ``checkpoints[].checksums``). These functions give the same values, so a trainer
or an operator can check that the file about to be restored is byte for byte the one the sidecar
verified. The definition (Java: ``io.trainguard.tensor.scan.ContentHash``):

1. cut the bytes into blocks of 32 KiB (the last may be shorter);
2. read a block as little-endian uint32 words, zero-padded to whole rows of 32 words; word ``i``
   goes to lane ``i % 32``; lane ``j`` starts at ``j * 0x85EBCA77 + 0x165667B1`` and takes each
   word as ``h = (h ^ (h >> 15) ^ w) * 0x9E3779B1`` (mod 2**32);
3. block value: ``r = len * P64``; per lane ``r = (r ^ h) * P64; r ^= r >> 29`` (mod 2**64);
4. string: ``t = t * R + block`` over the blocks, then ``fmix64(t ^ length * C)``;
5. safetensors file: its segments — the header (8-byte length + JSON), then every tensor in
   data-offset order — each cut into blocks as in 1, all those blocks combined as in 4 over the
   file's length (the same rule that combines pieces scanned on different threads).

Not a cryptographic hash: it detects accidental change (a change confined to one word per lane of a
block always, others with probability about 1 - 2**-32), not tampering — use sha256 for that.
"""
import json
import mmap
import os
import struct

import numpy as np

BLOCK = 32 * 1024
LANES = 32
_P32 = 0x9E3779B1
_LANE_STEP = 0x85EBCA77
_LANE_SEED = 0x165667B1
_P64 = 0x9E3779B97F4A7C15
_R = 0xFF51AFD7ED558CCD
_C = 0xC2B2AE3D27D4EB4F
_M64 = (1 << 64) - 1
_GROUP = 1024  # blocks per numpy pass: bounds memory at 32 MiB of words whatever the file size


def _fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    k ^= k >> 33
    return k


def _block_values(words, lengths):
    """words: uint32 array (blocks, rows, 32); lengths: bytes per block. Returns python ints."""
    with np.errstate(over="ignore"):
        h = (np.arange(LANES, dtype=np.uint32) * np.uint32(_LANE_STEP) + np.uint32(_LANE_SEED))
        h = np.broadcast_to(h, (words.shape[0], LANES)).copy()
        for row in range(words.shape[1]):
            h = (h ^ (h >> np.uint32(15)) ^ words[:, row, :]) * np.uint32(_P32)
        r = np.asarray(lengths, dtype=np.uint64) * np.uint64(_P64)
        for j in range(LANES):
            r = (r ^ h[:, j].astype(np.uint64)) * np.uint64(_P64)
            r ^= r >> np.uint64(29)
    return [int(v) for v in r]


def _words(data, rows):
    padded = np.zeros(rows * LANES * 4, dtype=np.uint8)
    padded[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return padded.view("<u4").astype(np.uint32)


def _running(data):
    """(t, number of blocks, length) of a bytes-like object: rule 4 before the final mix."""
    data = memoryview(data).cast("B")
    n = len(data)
    full = n // BLOCK
    values = []
    for first in range(0, full, _GROUP):
        # whole blocks a group at a time: a (blocks, 256, 32) array fed in 256 vector steps
        k = min(_GROUP, full - first)
        w = np.frombuffer(data[first * BLOCK:(first + k) * BLOCK], dtype="<u4").astype(np.uint32)
        values += _block_values(w.reshape(k, BLOCK // 128, LANES), [BLOCK] * k)
    tail = data[full * BLOCK:]
    if len(tail):
        rows = (len(tail) + 127) // 128
        values += _block_values(_words(tail, rows).reshape(1, rows, LANES), [len(tail)])
    t = 0
    for v in values:
        t = (t * _R + v) & _M64
    return t, len(values), n


def _finish(t, length):
    return _fmix64(t ^ ((length * _C) & _M64))


def tg1(data):
    """The tg1 checksum (an int < 2**64) of a bytes-like object."""
    t, _, n = _running(data)
    return _finish(t, n)


def hex64(value):
    return "%016x" % value


def safetensors_checksums(path):
    """(file checksum, {tensor name: checksum}) of a safetensors file, as the sidecar reports them
    ("tg1:<16 hex>")."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path} is empty, not a safetensors file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            raw = memoryview(m)
            try:
                return _safetensors_checksums(raw)
            finally:
                raw.release()


def _safetensors_checksums(raw):
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(bytes(raw[8:8 + hlen]))
    start = 8 + hlen
    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: tuple(kv[1]["data_offsets"]))
    t_file, length, per_tensor = 0, 0, {}
    for name, segment in [(None, raw[:start])] + [(k, None) for k, _ in tensors]:
        if name is not None:
            b, e = header[name]["data_offsets"]
            segment = raw[start + b:start + e]
        t, blocks, n = _running(segment)
        if name is not None:
            per_tensor[name] = "tg1:" + hex64(_finish(t, n))
        t_file = (t_file * pow(_R, blocks, 1 << 64) + t) & _M64
        length += n
    return "tg1:" + hex64(_finish(t_file, length)), per_tensor
