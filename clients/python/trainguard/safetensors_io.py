"""safetensors read/write: the ``safetensors`` package where installed, else the format itself
(8-byte little-endian header length, JSON header, raw little-endian C-order data)."""
import hashlib
import json
import os
import struct

import torch

_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_FROM = {v: k for k, v in _DTYPES.items()}


def _bytes(t):
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool \
        else t.reshape(-1).to(torch.uint8).numpy().tobytes()


def write_safetensors(tensors, path, metadata=None):
    """Writes ``tensors`` (name -> tensor) to ``path`` atomically; returns (sha256 hex, size)."""
    tmp = path + ".tmp"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    try:
        from safetensors.torch import save_file
        save_file(tensors, tmp, metadata=metadata)
    except ImportError:
        header, blobs, offset = {}, [], 0
        for name in sorted(tensors):
            t = tensors[name]
            b = _bytes(t)
            header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [offset, offset + len(b)]}
            blobs.append(b)
            offset += len(b)
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for b in blobs:
                f.write(b)
    os.replace(tmp, path)
    return sha256_file(path), os.path.getsize(path)


def read_safetensors(path):
    try:
        from safetensors.torch import load_file
        return load_file(path)
    except ImportError:
        pass
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _FROM[info["dtype"]]
        s, e = info["data_offsets"]
        raw = bytearray(data[base + s:base + e])
        if dt == torch.bool:
            t = torch.frombuffer(raw, dtype=torch.uint8).to(torch.bool) if raw else torch.empty(0, dtype=dt)
        else:
            t = torch.frombuffer(raw, dtype=dt) if raw else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
