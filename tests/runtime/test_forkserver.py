"""The workers' fork server starts before the run's own imports when the run asks for workers."""

from __future__ import annotations

import pytest

from adamodal import cli
from adamodal.errors import AdamodalError
from adamodal.runtime import forkserver


@pytest.mark.parametrize(("workers", "early"), [("2", True), ("1", False), ("0", False)])
def test_run_starts_the_fork_server_early_only_when_it_asks_for_workers(tmp_path, monkeypatch, workers, early):
    import adamodal.runtime.simulator as simulator

    started = []
    monkeypatch.setattr(forkserver, "start_early", lambda: started.append(True) or True)

    def stop(*args, **kwargs):
        raise AdamodalError("stopped before running")

    monkeypatch.setattr(simulator, "run_experiment", stop)
    code = cli.main(["run", "--set", f"workers={workers}", "rounds=1", "--out", str(tmp_path / "run")])
    assert code != 0  # the stub stopped it, after the decision
    assert bool(started) == early


def test_start_early_is_idempotent():
    if not forkserver.start_early():
        pytest.skip("no fork server on this platform")
    assert forkserver.start_early()  # a running fork server is left as it is
    assert forkserver.context().get_start_method() == "forkserver"
