"""A small Python stand-in for the sidecar, served over real gRPC, for the client's unit tests.

It implements just enough of the contract (default policy: FIXED clip, SKIP non-finite, ROLLBACK or
HALT after max_consecutive_skips) to test the client's own logic without the JVM. The fault
suite (test_faults_*.py) runs against the real sidecar jar instead."""
import math
import threading
import time
from concurrent import futures

import grpc

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb


class FakeSidecar:
    def __init__(self, max_grad_norm=100.0, clip=1.0, max_skips=3, delay=0.0, refuse=None, register_delay=0.0,
                 not_yet=0):
        self.max_grad_norm, self.clip, self.max_skips = max_grad_norm, clip, max_skips
        self.delay = delay
        self.register_delay = register_delay  # seconds each RegisterCheckpoint takes (a slow journal)
        self.not_yet = not_yet  # a checkpoint is VERIFIED for its first this many calls (reports lagging)
        self.down = False  # an outage: every call fails UNAVAILABLE at once
        self.calls = []  # ("ReportStep" | "RegisterCheckpoint", step) in arrival order
        self.refuse = refuse
        self.reports, self.validations, self.checkpoints, self.inspected = [], [], [], []
        self.skips = 0
        self.in_call = threading.Event()  # set when a ReportStep call arrives (before any delay)
        self.incidents = 0
        self.force = {}  # step -> Action (scripted verdicts)
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "OpenRun": (pb.OpenRunRequest, pb.OpenRunResponse, self.open_run),
            "ReportStep": (pb.ReportStepRequest, pb.ReportStepResponse, self.report_step),
            "BeginValidation": (pb.BeginValidationRequest, pb.BeginValidationResponse,
                                lambda r, c: pb.BeginValidationResponse(allowed=r.step >= 2, reason="warm-up" if r.step < 2 else "")),
            "EndValidation": (pb.EndValidationRequest, pb.EndValidationResponse, self.end_validation),
            "RegisterCheckpoint": (pb.RegisterCheckpointRequest, pb.RegisterCheckpointResponse, self.register),
            "CloseRun": (pb.CloseRunRequest, pb.CloseRunResponse, lambda r, c: pb.CloseRunResponse()),
            "InspectTensors": (pb.InspectTensorsRequest, pb.InspectTensorsResponse, self.inspect),
            "Heartbeat": (pb.HeartbeatRequest, pb.HeartbeatResponse, lambda r, c: pb.HeartbeatResponse()),
        }
        methods = {name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                             response_serializer=resp.SerializeToString)
                   for name, (req, resp, fn) in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("trainguard.v1.TrainGuardService", methods),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def start(self):
        self.server.start()
        return self

    def stop(self):
        self.server.stop(0)

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def bounds(self):
        return pb.LocalBounds(max_grad_norm=self.max_grad_norm, max_loss=1e6, clip_threshold=self.clip)

    def _outage(self, ctx):
        if self.down:  # True, or the description the sidecar itself sends (a full journal)
            ctx.abort(grpc.StatusCode.UNAVAILABLE, self.down if isinstance(self.down, str) else "the fake sidecar is down")

    def open_run(self, req, ctx):
        self._outage(ctx)
        self.open_request = req
        if self.refuse:
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, self.refuse)
        return pb.OpenRunResponse(run=pb.Run(run_id=req.run_id), bounds=self.bounds())

    def report_step(self, req, ctx):
        self._outage(ctx)
        self.in_call.set()
        if self.delay:
            time.sleep(self.delay)
        r = req.report
        with self._lock:
            self.reports.append(r)
            self.calls.append(("ReportStep", r.step))
            v = pb.Verdict(step=r.step, bounds=self.bounds(), validation_allowed=True)
            bad = not (math.isfinite(r.loss) and math.isfinite(r.grad_norm)) or not all(r.module_stats.finite)
            if r.step in self.force:
                v.action = self.force[r.step]
            elif bad:
                self.skips += 1
                for n, f in zip(r.module_stats.names, r.module_stats.finite):
                    if not f:
                        v.first_nonfinite_module = n
                        break
                v.action = pb.ACTION_SKIP
                if self.skips > self.max_skips:
                    v.action = pb.ACTION_ROLLBACK if self.checkpoints else pb.ACTION_HALT
                    v.reasons.append(f"{self.skips} consecutive non-finite steps")
            else:
                self.skips = 0
                v.action = pb.ACTION_CLIP if r.grad_norm > self.clip else pb.ACTION_APPLY
                v.clip_threshold = self.clip
            if v.action == pb.ACTION_ROLLBACK:
                c = self.checkpoints[-1]
                v.rollback.CopyFrom(pb.RollbackPlan(checkpoint_id=f"ck-{c.step}", checkpoint_step=c.step,
                                                    files=[f.path for f in c.files], data_position=c.data_position,
                                                    skip_batches=2, lr_factor=0.5, rewarm_steps=0, attempt=1))
                self.skips = 0
            return pb.ReportStepResponse(verdict=v)

    def end_validation(self, req, ctx):
        self.validations.append(req)
        a = req.audit
        if a.parameters_changed or a.wiring_changed or a.rng_changed or a.dtype_device_mode_changed:
            self.incidents += 1
            return pb.EndValidationResponse(incident_ids=[self.incidents])
        return pb.EndValidationResponse()

    def register(self, req, ctx):
        self._outage(ctx)
        if self.register_delay:
            time.sleep(self.register_delay)
        with self._lock:
            self.calls.append(("RegisterCheckpoint", req.step))
            calls = sum(1 for c in self.calls if c == ("RegisterCheckpoint", req.step))
        self.checkpoints.append(req)
        state = pb.CHECKPOINT_STATE_VERIFIED if calls <= self.not_yet else pb.CHECKPOINT_STATE_KNOWN_GOOD
        return pb.RegisterCheckpointResponse(checkpoint=pb.Checkpoint(
            checkpoint_id=f"ck-{req.step}", run_id=req.run_id, step=req.step, state=state))

    def inspect(self, req, ctx):
        self.inspected.append(req)
        return pb.InspectTensorsResponse(incident_id=99)
