"""torch.save files and DCP directories written here by real torch, registered with the real
sidecar jar over gRPC through trainguard.checkpoints, and verified (or refused) by it."""
import os
import subprocess
import sys
import time

import pytest
import torch

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.checkpoints import checkpoint_state, register_saved, restore
from trainguard.transport import Transport

RESOURCES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "src", "test", "resources", "torch")


@pytest.fixture(scope="module")
def transport(sidecar):
    t = Transport(sidecar.target, deadline=10.0)
    t.call("OpenRun", pb.OpenRunRequest(run_id="formats", world_size=1), deadline=30.0)
    yield t
    t.close()


@pytest.fixture(scope="module")
def files(sidecar):
    out = os.path.join(sidecar.checkpoint_root, "torch-files")
    os.makedirs(out, exist_ok=True)
    subprocess.run([sys.executable, os.path.join(RESOURCES, "write_torch_files.py"), out], check=True)
    return out


def settled(transport, registered, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c = checkpoint_state(transport, registered["checkpoint_id"], run="formats")
        if c and c["state"] not in ("CHECKPOINT_STATE_REGISTERED", "CHECKPOINT_STATE_VERIFYING"):
            return c
        time.sleep(0.1)
    raise AssertionError(f"checkpoint {registered} did not settle")


def test_registerSaved_torchSaveTrainingState_verified(transport, files):
    # prevents: the torch.save file most loops write staying UNVERIFIABLE (nothing to roll back to)
    c = settled(transport, register_saved(transport, os.path.join(files, "state.pt"), step=10, run="formats"))
    assert c["state"] == "CHECKPOINT_STATE_VERIFIED", c


def test_registerSaved_infInAdamState_rejectedNamingTensor(transport, files):
    # prevents: a poisoned exp_avg_sq restored because only the weights were checked
    c = settled(transport, register_saved(transport, os.path.join(files, "nan_optim.pt"), step=11, run="formats"))
    assert c["state"] == "CHECKPOINT_STATE_REJECTED", c
    assert "'optimizer.state.0.exp_avg_sq'" in c["state_reason"], c


def test_registerSaved_setWithOneBadFile_rejected(transport, files):
    # prevents: a checkpoint made of several files counted good when one of them is not
    c = settled(transport, register_saved(transport, [os.path.join(files, "state.pt"),
                                                      os.path.join(files, "nan_weight.pt")], step=12, run="formats"))
    assert c["state"] == "CHECKPOINT_STATE_REJECTED", c
    assert "'model.0.weight'" in c["state_reason"], c


def test_registerSaved_reduceToOsSystem_rejectedAndNothingRan(transport, files):
    # prevents: the sidecar (or this client) executing a malicious pickle's __reduce__
    c = settled(transport, register_saved(transport, os.path.join(files, "evil.pt"), step=13, run="formats"))
    assert c["state"] == "CHECKPOINT_STATE_REJECTED", c
    assert "system'" in c["state_reason"], c
    assert not os.path.exists(os.path.join(files, "evil-ran"))


def test_restore_userLoadStateDict_appliesVerifiedFile(files):
    # prevents: a rollback that can only restore trainguard's own file layout
    got = {}
    state = restore(os.path.join(files, "state.pt"), load_state_dict=got.update,
                    load=lambda fs: torch.load(fs[0], map_location="cpu"))
    assert got["step"] == 3 and torch.equal(state["i64"], torch.arange(5))


def test_registerSaved_folderOfSafetensorsWithNumpyArrays_readsEachFileAsWhatItIs(transport, sidecar):
    # prevents: a folder of safetensors weights that also holds a .npy (an EMA, metrics) refused whole
    # as "registered as safetensors but is numpy": never known-good; a NaN in that .npy still rejects it
    import numpy as np
    from trainguard.safetensors_io import write_safetensors
    for step, ema in ((14, np.arange(6, dtype=np.float32)), (15, np.array([1.0, np.nan], dtype=np.float32))):
        d = os.path.join(sidecar.checkpoint_root, f"with-npy-{step}")
        os.makedirs(d)
        write_safetensors({"w": torch.ones(3, 2)}, os.path.join(d, "model.safetensors"))
        np.save(os.path.join(d, "ema.npy"), ema)
        c = settled(transport, register_saved(transport, d, step=step, run="formats"))
        if step == 14:
            assert c["state"] == "CHECKPOINT_STATE_VERIFIED", c
        else:
            assert c["state"] == "CHECKPOINT_STATE_REJECTED" and "ema.npy" in c["state_reason"], c
