"""The ServerApp: the simulator's own server loop, with its clients on SuperNodes.

``@app.main()`` prepares the experiment from the run's config exactly as ``adamodal run``
does (the built-in benchmark data sets), or, for data the sites bring themselves, learns
the clients from the sites' answers and loads only its own test set, if any
(:mod:`adamodal.runtime.sites`); it learns which SuperNode plays which client, and runs
:class:`~adamodal.runtime.simulator.Simulator` with a
:class:`~adamodal.flower.clients.FlowerClients`: sampling, phases, aggregation, evaluation,
checkpoints, ``metrics.jsonl`` and ``summary.json`` are the same code as in process.

The run folder (``out-dir``) is written on the machine that runs the ServerApp, i.e. the
SuperLink's. When the run cannot go on (too few clients) the reason is written to
``error.txt`` there and the run ends as failed; the last checkpoint stays resumable.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from adamodal.errors import AdamodalError
from adamodal.flower.app import CONFIG_KEY
from adamodal.flower.clients import FlowerClients, TooFewClients
from adamodal.runtime.sites import is_site_local

ERROR_FILE = "error.txt"

app = ServerApp()
_log = logging.getLogger("flwr")


def _say(text: str) -> None:
    _log.info("[adamodal] %s", text)


def run_server(grid: Grid, run_config: dict[str, Any]) -> dict[str, Any]:
    """Run one experiment on ``grid``; returns the summary (also written to ``out-dir``)."""
    from adamodal.config import resolve
    from adamodal.runtime.simulator import Simulator, check_out_dir, prepare

    cfg = resolve(tomllib.loads(str(run_config[CONFIG_KEY])))
    out = Path(str(run_config["out-dir"]))
    resume = bool(run_config.get("resume", False))
    if not resume:
        check_out_dir(out, bool(run_config.get("force", False)))
    out.mkdir(parents=True, exist_ok=True)
    (out / ERROR_FILE).unlink(missing_ok=True)
    try:
        if is_site_local(cfg):
            exp, clients = _learn_sites(grid, cfg, run_config)
        else:
            exp = prepare(cfg, progress=False)
            clients = FlowerClients(grid, exp.infos(), timeout=float(run_config["reply-timeout"]),
                                    min_clients=int(cfg["min_clients"]), log=_say)
            wait = float(run_config["wait-nodes"])
            _say(f"waiting up to {wait:g} s for the SuperNodes of {len(exp.clients)} clients")
            nodes = clients.discover(wait)
            if len(nodes) < min(int(cfg["min_clients"]), len(exp.clients)) or not nodes:
                missing = sorted(set(range(len(exp.clients))) - set(nodes))
                raise TooFewClients(
                    f"only {len(nodes)} of {len(exp.clients)} clients joined within {wait:g} s "
                    f"(min_clients={cfg['min_clients']}); missing clients {missing}{_refused(clients)}")
        nodes = clients.nodes
        n_clients = len(exp.infos())
        _say(f"{len(nodes)} of {n_clients} clients joined; running {cfg['method']} for {cfg['rounds']} rounds")
        summary = Simulator(exp, out, progress=False, clients=clients).run(resume=resume)
        _say(f"finished: {out / 'summary.json'}")
        return summary
    except AdamodalError as exc:
        (out / ERROR_FILE).write_text(str(exc) + "\n")
        _say(f"failed: {exc}")
        raise


def _refused(clients: FlowerClients) -> str:
    return "".join(f"; SuperNode {n}: {r}" for n, r in clients.refused.items())


def _learn_sites(grid: Grid, cfg: Any, run_config: dict[str, Any]) -> tuple[Any, FlowerClients]:
    """Site-local data: the clients are whatever the sites' SuperNodes declare (client ids
    0..K-1); the server reads nothing but its own test set."""
    from adamodal.runtime.sites import server_experiment

    clients = FlowerClients(grid, None, timeout=float(run_config["reply-timeout"]),
                            min_clients=int(cfg["min_clients"]), log=_say)
    wait = float(run_config["wait-nodes"])
    _say(f"waiting up to {wait:g} s for the sites' SuperNodes to declare their clients")
    nodes = clients.discover(wait)
    missing = sorted(set(range(max(nodes) + 1)) - set(nodes)) if nodes else []
    if not nodes or missing or len(nodes) < int(cfg["min_clients"]):
        gap = f"; no SuperNode for client ids {missing} (client ids run 0..K-1)" if missing else ""
        raise TooFewClients(f"{len(nodes)} site(s) declared a client within {wait:g} s "
                            f"(min_clients={cfg['min_clients']}){gap}{_refused(clients)}")
    exp = server_experiment(cfg, clients.declared)
    clients.adopt(exp.infos())
    test = ", ".join(exp.test) or "none: federated evaluation only"
    _say(f"{len(nodes)} sites declared their clients; the server's test set: {test}")
    return exp, clients


@app.main()
def main(grid: Grid, context: Context) -> None:
    summary = run_server(grid, dict(context.run_config))
    _say(json.dumps({"groups": summary["groups"], "test": summary["test"]}))
