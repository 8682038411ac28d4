"""``adamodal flower ...``: certificates and node keys, SuperLink, SuperNode, registering
SuperNodes, submitting a run, app folder."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adamodal.errors import AdamodalError

SECURITY_HELP = ("TLS: folder from `adamodal flower certs` (the SuperLink reads ca.crt, server.crt, server.key; "
                 "SuperNodes and `run` read ca.crt)")


def _security(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--certificates", type=Path, metavar="DIR", help=SECURITY_HELP)
    g.add_argument("--insecure", action="store_true",
                   help="no TLS: traffic is not encrypted (a test on one machine only); one of "
                        "--certificates or --insecure is required")


def _exec(cmd: list[str]) -> int:
    """Become the Flower process, so signals (Ctrl-C, a service manager's stop) reach it."""
    from adamodal.flower.processes import flower_env

    print("$ " + " ".join(cmd), flush=True)
    os.execvpe(cmd[0], cmd, flower_env())
    return 0  # not reached


def cmd_certs(args: argparse.Namespace) -> int:
    from adamodal.flower.certs import make_certificates

    files = make_certificates(args.dir, args.host, args.nodes, force=args.force)
    print(f"wrote {len(files)} files into {args.dir}: ca.crt, ca.key (keep private), server.crt, server.key"
          + (f", node_0..node_{args.nodes - 1}/ (one per site: ca.crt, node.key, node.pub)" if args.nodes else ""))
    if args.nodes:
        print(f"once the SuperLink runs, admit the sites: adamodal flower register {args.dir}/node_*/node.pub "
              f"--certificates {args.dir}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from adamodal.flower.certs import make_node_keys

    private, public = make_node_keys(args.dir, force=args.force)
    print(f"wrote {private} (stays on this site) and {public}\n"
          f"send {public} to the SuperLink's operator, who runs: adamodal flower register node.pub "
          f"--certificates DIR\nthen start this site: adamodal flower supernode --node-key {private} ...")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from adamodal.flower.processes import register_nodes

    if args.certificates is None:
        raise AdamodalError("registering SuperNodes needs TLS: pass --certificates DIR (SuperNode "
                            "authentication is not available with --insecure)")
    for key, node_id in register_nodes(args.keys, superlink=args.superlink, certificates=args.certificates).items():
        print(f"registered {key}: node id {node_id}")
    return 0


def cmd_superlink(args: argparse.Namespace) -> int:
    from adamodal.flower.processes import superlink_command

    return _exec(superlink_command(host=args.host, port=args.port, certificates=args.certificates,
                                   insecure=args.insecure, simulation=args.simulation, database=args.database,
                                   node_auth=False if args.no_node_auth else None))


def cmd_supernode(args: argparse.Namespace) -> int:
    from adamodal.flower.processes import supernode_command

    return _exec(supernode_command(superlink=args.superlink, client_id=args.client_id, data=args.data,
                                   certificates=args.certificates, insecure=args.insecure, port=args.port,
                                   state=args.state, clientapp=args.clientapp, key=args.node_key))


def cmd_flower_run(args: argparse.Namespace, resolve_args: Callable[[argparse.Namespace], Any]) -> int:
    from adamodal.config import load_toml, resolve
    from adamodal.flower.processes import check_security, submit
    from adamodal.flower.server_app import ERROR_FILE
    from adamodal.report import print_table, run_rows

    check_security(args.certificates, args.insecure)
    if args.resume:
        out = Path(args.resume)
        cfg = resolve(load_toml(out / "config.toml"))
    else:
        cfg = resolve_args(args)
        out = args.out or Path("runs") / f"{cfg['dataset']}-{cfg['method']}-s{cfg['seed']}-flower"
    result = submit(cfg, out, superlink=args.superlink, certificates=args.certificates, insecure=args.insecure,
                    simulation=args.simulation, resume=bool(args.resume), force=args.force,
                    timeout=args.timeout, wait=args.wait, log=(lambda _: None) if args.quiet else print)
    if not result.ok:
        why = result.details or "no details"
        error = Path(out) / ERROR_FILE
        if error.exists():  # the run folder is on this machine (one-machine deployment)
            why = error.read_text().strip()
        raise AdamodalError(f"Flower run {result.run_id} {result.status}: {why}")
    print(f"Flower run {result.run_id} {result.status} in {result.elapsed_s:.1f} s")
    summary_path = Path(out) / "summary.json"
    if summary_path.exists():
        import json

        summary = json.loads(summary_path.read_text())
        header, rows = run_rows(summary)
        print_table(header, rows, title=f"{summary['method']} on {summary['dataset']} under Flower: "
                    f"{summary['rounds']} rounds, {summary['bytes_up'] / 1e6:.2f} MB up")
        print(f"wrote {out}/summary.json, metrics.jsonl, config.toml")
    else:
        print(f"the run folder {out} is on the SuperLink's machine")
    return 0


def cmd_app(args: argparse.Namespace, resolve_args: Callable[[argparse.Namespace], Any]) -> int:
    from adamodal.flower.app import write_app

    cfg = resolve_args(args)
    out = args.out or Path("runs") / f"{cfg['dataset']}-{cfg['method']}-s{cfg['seed']}-flower"
    app_dir = write_app(args.dir, cfg, out, force=args.force, timeout=args.timeout, wait=args.wait)
    n = int(cfg["clients.multimodal"]) + int(cfg["clients.image_only"]) + int(cfg["clients.text_only"])
    print(f"wrote {app_dir}/pyproject.toml; run it with Flower, e.g. a local simulation:\n"
          f"  FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run {app_dir} local "
          f"--federation-config 'num-supernodes={n}'\n"
          f"(results go to {Path(out).resolve()} on the machine running the ServerApp; "
          f"`adamodal flower run` submits and waits for you)")
    return 0


def add_flower_parser(sub: Any, config_args: Callable[[argparse.ArgumentParser], None],
                      resolve_args: Callable[[argparse.Namespace], Any]) -> None:
    """Register ``adamodal flower`` and its subcommands on the top-level subparsers."""
    from adamodal.flower.app import DEFAULT_TIMEOUT, DEFAULT_WAIT
    from adamodal.flower.processes import CLIENTAPP_MODES, DEFAULT_NODE_PORT, DEFAULT_SUPERLINK_PORT

    f = sub.add_parser("flower", help="run on Flower: certificates, keys, SuperLink, SuperNodes, submit a run",
                       description="Deploy a run with Flower: one SuperLink (the server), one SuperNode per "
                                   "client site, then `adamodal flower run` submits the run and waits for it.")
    fs = f.add_subparsers(dest="flower_command", required=True)

    c = fs.add_parser("certs", help="make a self-signed CA, TLS certificates and node keys for a test consortium")
    c.add_argument("dir", type=Path, help="folder to write ca.crt, ca.key, server.crt, server.key, node_<i>/")
    c.add_argument("--nodes", type=int, default=0, help="number of site folders node_<i>/ (each holds ca.crt and a node key pair)")
    c.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="host name or IP the SuperLink is reached at (repeatable; localhost and 127.0.0.1 "
                        "are always included)")
    c.add_argument("--force", action="store_true", help="replace existing certificates")
    c.set_defaults(func=cmd_certs)

    k = fs.add_parser("keys", help="make a site's SuperNode key pair (node.key stays, node.pub is registered)")
    k.add_argument("dir", type=Path, help="folder to write node.key and node.pub into")
    k.add_argument("--force", action="store_true", help="replace an existing key pair")
    k.set_defaults(func=cmd_keys)

    sl = fs.add_parser("superlink", help="start the SuperLink (server side; the ServerApp runs under it)")
    sl.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    sl.add_argument("--port", type=int, default=DEFAULT_SUPERLINK_PORT,
                    help="port for SuperNodes and `adamodal flower run` (default %(default)s)")
    _security(sl)
    sl.add_argument("--simulation", action="store_true",
                    help="simulate the SuperNodes (Ray) instead of waiting for real ones")
    sl.add_argument("--database", type=Path,
                    help="SuperLink state file, which also keeps the registered SuperNodes across restarts "
                         "(default: in memory)")
    sl.add_argument("--no-node-auth", action="store_true",
                    help="admit any SuperNode (Flower's default); by default, with TLS, only SuperNodes whose "
                         "public keys were registered (`adamodal flower register`) may join")
    sl.set_defaults(func=cmd_superlink)

    rg = fs.add_parser("register", help="admit SuperNodes: register their public keys with a running SuperLink")
    rg.add_argument("keys", type=Path, nargs="+", metavar="NODE.pub", help="public keys of the sites' SuperNodes")
    rg.add_argument("--superlink", default=f"127.0.0.1:{DEFAULT_SUPERLINK_PORT}", metavar="HOST:PORT",
                    help="the SuperLink's address (default %(default)s)")
    _security(rg)
    rg.set_defaults(func=cmd_register)

    sn = fs.add_parser("supernode", help="start one site's SuperNode (client side)")
    sn.add_argument("--client-id", type=int, required=True, help="which client of the scenario this site is (0-based)")
    sn.add_argument("--data", type=Path,
                    help="this site's data, and all it reads: for dataset folder one client's folder "
                         "(images/, texts/, labels.csv), for mimic_cxr/iu_xray the site's subset in that "
                         "layout; for the built-in benchmark data sets the adamodal data cache folder "
                         "(default: $ADAMODAL_CACHE or ~/.cache/adamodal)")
    sn.add_argument("--state", type=Path,
                    help="where the site keeps its client's state (personal parameters) between rounds, "
                         "for resumed runs (default: flower-state/ in the adamodal data cache, i.e. "
                         "DATA/flower-state for the built-in data sets)")
    sn.add_argument("--superlink", default=f"127.0.0.1:{DEFAULT_SUPERLINK_PORT}", metavar="HOST:PORT",
                    help="the SuperLink's address (default %(default)s)")
    sn.add_argument("--port", type=int,
                    help=f"local port of the SuperNode's runtime API (default {DEFAULT_NODE_PORT} + client id)")
    sn.add_argument("--clientapp", choices=CLIENTAPP_MODES, default="warm",
                    help="warm (default): one long-lived process runs this site's ClientApp messages, "
                         "keeping imports and the prepared data; per-message: Flower's own way, a new "
                         "process for every message (seconds of CPU each)")
    sn.add_argument("--node-key", type=Path, metavar="FILE",
                    help="this site's private key for SuperNode authentication (default: node.key in the "
                         "--certificates folder, when there)")
    _security(sn)
    sn.set_defaults(func=cmd_supernode)

    r = fs.add_parser("run", help="submit a run to a SuperLink, wait, exit non-zero if it failed",
                      description="Submit a run (the config travels with it) to a SuperLink, wait until it has "
                                  "finished and print its summary. Exit code 0 only when the run's status is "
                                  "finished:completed; 1 with the reason otherwise (e.g. fewer than min_clients "
                                  "clients replied).")
    config_args(r)
    r.add_argument("--superlink", default=f"127.0.0.1:{DEFAULT_SUPERLINK_PORT}", metavar="HOST:PORT",
                   help="the SuperLink's address (default %(default)s)")
    _security(r)
    r.add_argument("--simulation", action="store_true",
                   help="the SuperLink runs with --simulation: one virtual SuperNode per client")
    r.add_argument("--out", type=Path, help="run folder, on the SuperLink's machine "
                                            "(default runs/<dataset>-<method>-s<seed>-flower)")
    r.add_argument("--resume", metavar="DIR", help="continue a stopped run from its last checkpoint")
    r.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds to wait for a client's reply before dropping it from the phase (default %(default)g)")
    r.add_argument("--wait", type=float, default=DEFAULT_WAIT,
                   help="seconds to wait for the SuperNodes to join before starting (default %(default)g)")
    r.set_defaults(func=lambda a: cmd_flower_run(a, resolve_args))

    a = fs.add_parser("app", help="write a Flower app folder for `flwr run` (config included)")
    a.add_argument("dir", type=Path, help="folder to write pyproject.toml into")
    config_args(a)
    a.add_argument("--out", type=Path, help="run folder on the machine running the ServerApp")
    a.add_argument("--force", action="store_true", help="let the run overwrite an existing run folder")
    a.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="reply timeout per phase, seconds")
    a.add_argument("--wait", type=float, default=DEFAULT_WAIT, help="seconds to wait for the SuperNodes to join")
    a.set_defaults(func=lambda a: cmd_app(a, resolve_args))
