"""trainguard.testing.Sidecar, the launcher tests and examples use: two sidecars handed the same
free port (free_port() closes it before the JVM binds) must not end up sharing one."""
from trainguard import testing
from sidecar_fixture import default_jar


def test_a_sidecar_given_a_port_taken_meanwhile_starts_on_other_ports(tmp_path, monkeypatch):
    # Prevents: the second sidecar's checks answered by the first one (ready, warm-up call OK) while
    # its own JVM failed to bind and exited: its Guard then got "connection refused" once the first stopped.
    first = testing.Sidecar(jar=default_jar(), workdir=str(tmp_path / "a")).start()
    try:
        taken = iter([first.port, first.management_port])
        real = testing.free_port
        monkeypatch.setattr(testing, "free_port", lambda: next(taken, None) or real())
        second = testing.Sidecar(jar=default_jar(), workdir=str(tmp_path / "b")).start()
        try:
            assert second.port != first.port and second.proc.poll() is None
            assert second._listening()  # its own JVM listens on its port
        finally:
            second.stop()
        assert first.proc.poll() is None  # the first one untouched
    finally:
        first.stop()
