"""Who holds the GIL in a guarded loop, from py-spy's raw samples (``py-spy record --gil --threads
-f raw``, taken while ``sender_probe.py`` runs its timed steps; see ``gil-profile-cmd.sh``).

With ``--gil`` py-spy keeps a sample only for the thread holding the GIL at that moment, so the
share of samples a thread has is the share of time it held the GIL, and the samples missing from
``rate * seconds`` are the time nobody held it. For the training thread the samples are split by
where they fell: the guard's calls (by the outermost and the innermost trainguard function), the
optimizer, torch.compile's wrappers, the loop itself.

``--step-ms`` (the probe's step time) also gives each phase's GIL time per step: the training
thread in the compiled forward, in the optimizer's own code, in the guard, elsewhere; and each other
thread (autograd's, which runs a compiled backward's Python, and the guard's sender).

Usage: python gil_profile.py RAW.txt --rate 1000 --seconds 8 [--step-ms 21.5] [--top 25]
"""
import argparse
import collections
import re

THREAD = re.compile(r"thread \((\w+)\)(?::\s*(.*))?")


def parse(path):
    """Yields (thread id, thread name or '', [frames outermost first], samples)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            m = THREAD.match(frames[0])
            if not m:
                continue
            yield m.group(1), (m.group(2) or "").strip(), frames[1:], int(count)


def short(frame):
    """'func (pkg/file.py:12)' -> 'file.py:func'."""
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    return f"{m.group(2).rsplit('/', 1)[-1]}:{m.group(1)}"


def bucket(frames):
    """Where a training-thread sample fell: the guard's (outermost -> innermost trainguard frame), or
    the first library the loop called into."""
    guard = [f for f in frames if "trainguard/" in f]
    if guard:
        return f"guard  {short(guard[0])} -> {short(guard[-1])}"
    for lib in ("torch/optim", "torch/_dynamo", "torch/_functorch", "torch/_inductor", "torch/autograd",
                "torch/utils/_device", "torch/"):
        hit = [f for f in frames if lib in f]
        if hit:
            return f"torch  {lib} ({short(hit[-1])})"
    return f"other  {short(frames[-1]) if frames else '?'}"


def phase(frames):
    """The training thread's phase a sample fell in."""
    s = ";".join(frames)
    if "OptimizedModule.__call__" in s or "compile_wrapper" in s:
        return "compiled forward"
    if "torch/optim" in s:
        return "the optimizer's own code"
    if "trainguard/" in s:
        return "the guard"
    return "elsewhere (the loop, backward's call, zero_grad)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--rate", type=float, required=True, help="py-spy's --rate")
    ap.add_argument("--seconds", type=float, required=True, help="py-spy's --duration")
    ap.add_argument("--step-ms", type=float, help="the probe's ms per step: GIL ms per step by phase")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    expected = a.rate * a.seconds
    names, per_thread = {}, collections.Counter()
    buckets, phases = collections.Counter(), collections.Counter()
    records = list(parse(a.raw))
    for tid, name, _, _ in records:
        if name:
            names[tid] = name  # py-spy names a thread on some of its lines only
    for tid, _, frames, n in records:
        per_thread[tid] += n
        if names.get(tid) == "MainThread":
            buckets[bucket(frames)] += n
            phases["training thread: " + phase(frames)] += n
        else:
            phases[f"thread {names.get(tid, 'unnamed (autograd)')}"] += n
    total = sum(per_thread.values())
    print(f"samples with a GIL holder: {total} of ~{expected:.0f} ({total / expected:.1%} of the time)")
    for tid, n in per_thread.most_common():
        print(f"  {names.get(tid, tid):<40} {n:>7}  {n / expected:6.1%} of the time")
    if a.step_ms:
        per_step = 1e3 / a.rate / (a.seconds * 1e3 / a.step_ms)  # ms of GIL per sample, per step
        print(f"\nGIL ms per step ({a.step_ms} ms steps):")
        for key, n in phases.most_common():
            print(f"  {n * per_step:7.3f}  {key}")
    main_total = sum(buckets.values())
    print(f"\nthe training thread's GIL time by place ({main_total} samples):")
    for key, n in buckets.most_common(a.top):
        print(f"  {n / expected:6.2%}  {key}")


if __name__ == "__main__":
    main()
