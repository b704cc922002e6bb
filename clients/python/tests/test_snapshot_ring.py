"""The snapshot ring and its pace against plain torch objects, no sidecar: which slot a snapshot
goes to, when one is due (its interval, its measured cost, the pace ranks agree on), which stays
known-good."""
from trainguard.snapshot import KNOWN_GOOD, SnapshotPolicy, SnapshotStore
from trainguard.snapshot_schedule import SnapshotRing
from models import fit_plain, make


def test_ring_keeps_the_newest_known_good_and_discards_pending_on_unhealthy_step():
    # prevents: overwriting the only known-good snapshot, or keeping one that saw a fault
    model, opt = make()
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=2, max_overhead=0))
    ring = SnapshotRing(store, known_good_steps=3)
    taken = []
    for step in range(40):
        fit_plain(model, opt, step + 1, start=step)
        for s in ring.on_healthy(step):
            s.state = KNOWN_GOOD
        if ring.due():
            v = ring.victim()
            assert v is not None
            store.take(v, step, step + 1)
            ring.taken()
            taken.append(step)
        good = ring.known_good()
        if taken and taken[0] + 3 < step:
            assert good, f"no known-good snapshot at step {step}"
    # every interval (2) healthy steps, but never while one is pending (known-good after 3): every 3
    assert taken[:3] == [1, 4, 7]
    pending = ring.pending()
    ring.on_unhealthy(40)
    assert all(s.state == "EMPTY" for s in pending) and ring.known_good()


def test_ring_of_several_ranks_waits_for_the_agreed_steps_not_its_own_clock():
    # prevents: ranks whose own clocks hold a snapshot back at different steps (each rank measures a
    # different cost, and rank 0 registers the slot for all of them)
    model, opt = make()
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=2, max_overhead=0.5))
    ring = SnapshotRing(store, known_good_steps=1, several_ranks=lambda: True)
    ring.taken()                 # this rank's clock now measures the cost and would say "not yet"
    ring.on_healthy(0)
    ring.on_healthy(1)
    assert ring.due()            # the interval is reached and nothing else was agreed
    ring.agree_pace(5)
    assert not ring.due()
    for step in range(2, 5):
        ring.on_healthy(step)
    assert ring.due()


def _paced(monkeypatch):
    """A SnapshotPace (max_overhead 1 %) on a fake clock after 10 usual steps of 20 ms; returns it
    and step(dt), which advances the clock by dt and reports a step."""
    from trainguard import snapshot_schedule as snap
    clock = [0.0]
    monkeypatch.setattr(snap.time, "perf_counter", lambda: clock[0])
    pace = snap.SnapshotPace(max_overhead=0.01)

    def step(dt=0.020):
        clock[0] += dt
        pace.on_step()
    for _ in range(10):
        step()
    return pace, step


def test_pace_spaces_snapshots_by_their_measured_cost(monkeypatch):
    # prevents: snapshots of a large state every few fast steps costing far more than max_overhead
    pace, step = _paced(monkeypatch)
    assert pace.allows()         # nothing taken yet
    pace.taken()
    for dt in (0.032, 0.020, 0.020):  # the step after the snapshot took 12 ms more
        step(dt)
    assert abs(pace.cost_s - 0.012) < 1e-9
    for _ in range(50):          # 1.072 s of steps since the snapshot: 12 ms / 0.01 = 1.2 s not yet run
        step()
    assert not pace.allows()
    for _ in range(7):
        step()
    assert pace.allows()


def test_pace_counts_training_steps_not_time_between_them(monkeypatch):
    # prevents: a loop that trains in bursts (validation, other work, an interleaved benchmark)
    # snapshotting far more often per step than max_overhead allows
    pace, step = _paced(monkeypatch)
    pace.taken()
    for dt in (0.032, 0.020, 0.020):
        step(dt)
    for _ in range(5):           # 5 s between steps: counted as 3 usual steps each
        step(5.0)
    assert not pace.allows()     # 0.372 s of training since the snapshot, 1.2 s needed


def test_pace_turns_its_cost_into_usual_steps_for_ranks_to_agree_on(monkeypatch):
    # prevents: several ranks pacing by time, which differs per rank (they must snapshot at the same steps)
    from trainguard import snapshot_schedule as snap
    pace, step = _paced(monkeypatch)
    assert pace.steps_needed() == 0          # nothing measured yet
    pace.taken()
    for dt in (0.032, 0.020, 0.020):
        step(dt)
    assert pace.steps_needed() == 60         # 12 ms / 1 % = 1.2 s of 20 ms steps
    assert snap.SnapshotPace(max_overhead=0).steps_needed() == 0


def test_pace_caps_a_cost_inflated_by_an_unrelated_pause(monkeypatch):
    # prevents: a validation pass right after a snapshot postponing the next one for hours
    from trainguard import snapshot_schedule as snap
    pace, step = _paced(monkeypatch)
    pace.taken()
    for dt in (60.0, 0.020, 0.020):
        step(dt)
    assert pace.cost_s == snap.SnapshotPace.MAX_COST_STEPS * 0.020
