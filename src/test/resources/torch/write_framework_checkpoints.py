"""Writes the checkpoints frameworks write, with the current torch (the venv), for the tests.

usage: python write_framework_checkpoints.py OUT_DIR
  OUT_DIR/dcp/       torch.distributed.checkpoint.save on 2 gloo ranks (a DTensor sharded by rows)
  OUT_DIR/hf/        save_pretrained of a tiny config-built GPT-2, sharded safetensors + index
  OUT_DIR/lightning/ the .ckpt of a real Trainer.fit on a tiny model (2 steps)
"""
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

out = sys.argv[1]


def dcp_rank(rank, path, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
    mesh = DeviceMesh("cpu", [0, 1])
    w = distribute_tensor(torch.arange(32, dtype=torch.float32).reshape(8, 4), mesh, [Shard(0)])
    dcp.save({"model": {"w": w, "b": torch.ones(3)}, "step": 7}, checkpoint_id=path)
    dist.destroy_process_group()


def write_dcp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(dcp_rank, args=(os.path.join(out, "dcp"), port), nprocs=2)


def write_hf():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    GPT2LMHeadModel(cfg).save_pretrained(os.path.join(out, "hf"), max_shard_size="20KB")


def write_lightning():
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = L.Trainer(max_steps=2, default_root_dir=os.path.join(out, "lightning"), logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), data)
    trainer.save_checkpoint(os.path.join(out, "lightning", "tiny.ckpt"))


if __name__ == "__main__":
    for what in sys.argv[2:] or ["dcp", "hf", "lightning"]:
        globals()["write_" + what]()
