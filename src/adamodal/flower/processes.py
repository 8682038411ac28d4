"""Starting Flower's SuperLink and SuperNodes, and submitting a run and waiting for it.

These wrap Flower's own executables (``flower-superlink``, ``flower-supernode``, ``flwr``)
with the flags a consortium needs: TLS from one certificates folder (or ``--insecure``, only
when asked for), Flower's SuperNode authentication on top of TLS (the SuperLink admits only
SuperNodes whose public keys were registered with it; each SuperNode signs its requests with
its private key), the client id and data folder of a site, runtime dependency installation
off (sites are offline). A submitted run is judged by its status on the SuperLink
(``finished:completed``), never by ``flwr run``'s exit code, which is 0 even for a run that
fails later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from adamodal.config import Config
from adamodal.errors import AdamodalError, ConfigError
from adamodal.flower.app import DEFAULT_TIMEOUT, DEFAULT_WAIT, write_app
from adamodal.flower.certs import NODE_KEY

#: certificate file names inside a ``--certificates`` folder (written by ``adamodal flower certs``)
CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.crt", "server.key"
DEFAULT_SUPERLINK_PORT = 9092
DEFAULT_NODE_PORT = 9200  # a SuperNode's local runtime API: 9200 + client id
CONNECTION = "adamodal"
#: how a SuperNode runs its ClientApp: one warm process, or Flower's process per message
CLIENTAPP_MODES = ("warm", "per-message")


def executable(name: str) -> str:
    """A Flower executable from this Python's environment (so the versions match)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment Flower's processes run in: offline, this environment's executables
    first on PATH (the SuperLink and SuperNodes start ``flwr-serverapp``/``flwr-clientapp``)."""
    env = dict(os.environ)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    # Flower's executors look for a new task every second by default: a second per run start
    # (ServerApp) and per message (per-message ClientApps) that nobody computes in
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def check_security(certificates: Path | None, insecure: bool) -> None:
    """TLS unless insecure mode is asked for explicitly; never both, never neither."""
    if certificates is not None and insecure:
        raise ConfigError("pass either --certificates DIR or --insecure, not both")
    if certificates is None and not insecure:
        raise ConfigError("pass --certificates DIR (TLS; make them with `adamodal flower certs DIR`) "
                          "or --insecure to run without encryption (testing only)")


def _cert(certificates: Path, name: str) -> str:
    path = Path(certificates) / name
    if not path.is_file():
        raise ConfigError(f"{path}: certificate file not found (make the folder with `adamodal flower certs`)")
    return str(path)


def superlink_auth_args(node_auth: bool, insecure: bool) -> list[str]:
    """The SuperLink's flags for Flower's SuperNode authentication: with them it refuses every
    SuperNode whose public key was not registered through its Control API (``register_nodes``,
    ``flwr supernode register``), instead of letting any SuperNode register itself."""
    if not node_auth:
        return []
    if insecure:
        raise ConfigError("SuperNode authentication needs TLS: pass --certificates DIR, or turn it off "
                          "with --no-node-auth")
    return ["--enable-supernode-auth"]


def supernode_auth_args(key: Path | None, insecure: bool) -> list[str]:
    """A SuperNode's flags for Flower's SuperNode authentication: the private key it signs its
    requests with (``node.key`` from ``adamodal flower keys``/``certs``). Without one the node
    registers itself with a fresh key, which a SuperLink with authentication refuses."""
    if key is None:
        return []
    if insecure:
        raise ConfigError(f"--node-key {key}: SuperNode authentication needs TLS (--certificates DIR)")
    if not Path(key).is_file():
        raise ConfigError(f"--node-key {key}: key file not found (make one with `adamodal flower keys DIR`)")
    return ["--auth-supernode-private-key", str(Path(key).resolve())]


def default_node_key(certificates: Path | None) -> Path | None:
    """The node key a site folder from ``adamodal flower certs`` holds (``node_<i>/node.key``)."""
    path = None if certificates is None else Path(certificates) / NODE_KEY
    return path if path is not None and path.is_file() else None


def superlink_command(*, host: str, port: int, certificates: Path | None, insecure: bool,
                      simulation: bool = False, database: Path | None = None,
                      node_auth: bool | None = None) -> list[str]:
    """The command that starts the SuperLink. ``node_auth`` (default: on with TLS, off for
    ``--insecure`` and ``--simulation``) admits only registered SuperNodes."""
    check_security(certificates, insecure)
    cmd = [executable("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        cmd.append("--insecure")
    else:
        assert certificates is not None
        cmd += ["--ssl-ca-certfile", _cert(certificates, CA_CERT), "--ssl-certfile", _cert(certificates, SERVER_CERT),
                "--ssl-keyfile", _cert(certificates, SERVER_KEY)]
    if simulation:
        cmd.append("--simulation")
    cmd += superlink_auth_args(not insecure and not simulation if node_auth is None else node_auth, insecure)
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(*, superlink: str, client_id: int, data: Path | None, certificates: Path | None,
                      insecure: bool, port: int | None = None, state: Path | None = None,
                      clientapp: str = "warm", key: Path | None = None) -> list[str]:
    """The command that starts one site's SuperNode.

    ``key``: the node's private key for SuperNode authentication (default: ``node.key`` in the
    ``certificates`` folder when there is one).

    ``clientapp="warm"`` (the default) runs the site's ClientApp messages in one long-lived
    process (:mod:`adamodal.flower.warm`); ``"per-message"`` leaves it to Flower, which starts
    a new ``flwr-clientapp`` process for every message (seconds of CPU each)."""
    check_security(certificates, insecure)
    if clientapp not in CLIENTAPP_MODES:
        raise ConfigError(f"--clientapp {clientapp}: expected one of {', '.join(CLIENTAPP_MODES)}")
    node_config = f"client-id={int(client_id)}"
    if data is not None:
        if not Path(data).exists():
            raise ConfigError(f"--data {data}: no such folder")
        node_config += " data-path=" + json.dumps(str(Path(data).resolve()))
    if state is not None:
        node_config += " state-path=" + json.dumps(str(Path(state).resolve()))
    cmd = [executable("flower-supernode"), "--superlink", superlink, "--node-config", node_config,
           "--port", str(port if port is not None else DEFAULT_NODE_PORT + int(client_id))]
    if insecure:
        cmd.append("--insecure")
    else:
        assert certificates is not None
        cmd += ["--root-certificates", _cert(certificates, CA_CERT)]
    cmd += supernode_auth_args(key if key is not None else default_node_key(certificates), insecure)
    if clientapp == "warm":
        runtime_api = f"127.0.0.1:{port if port is not None else DEFAULT_NODE_PORT + int(client_id)}"
        return [sys.executable, "-m", "adamodal.flower.warm", "--runtime-api-address", runtime_api, "--", *cmd]
    return cmd


def write_flower_home(home: Path, superlink: str, certificates: Path | None, insecure: bool) -> Path:
    """A Flower config with one SuperLink connection, so ``flwr`` never touches ``~/.flwr``."""
    check_security(certificates, insecure)
    conn: dict[str, object] = {"address": superlink}
    if insecure:
        conn["insecure"] = True
    else:
        assert certificates is not None
        conn["root-certificates"] = str(Path(_cert(certificates, CA_CERT)).resolve())
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
    return home


def _check_public_key(path: Path) -> None:
    """A clear error for a file ``flwr supernode register`` would reject with an exit code."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if not path.is_file():
        raise ConfigError(f"{path}: public key file not found (a site makes its pair with `adamodal flower keys DIR`)")
    try:
        key = load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{path}: not an OpenSSH public key ({err}); register the node.pub of "
                          "`adamodal flower keys`, never the private node.key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: an ECDSA (NIST curve) key is needed, this is {type(key).__name__}")


def register_nodes(public_keys: list[Path], *, superlink: str, certificates: Path) -> dict[Path, int]:
    """Register SuperNodes' public keys with a running SuperLink; returns their node ids.

    Runs Flower's own ``flwr supernode register KEY`` (through the SuperLink's Control API),
    all keys at once: each ``flwr`` start costs about a second of CPU. Registrations live in
    the SuperLink's state: in memory unless it was started with ``--database FILE``."""
    for key in public_keys:
        _check_public_key(Path(key))
    with tempfile.TemporaryDirectory(prefix="adamodal-flwr-") as tmp:
        env = flower_env(write_flower_home(Path(tmp) / "home", superlink, certificates, False))
        procs = {key: _flwr_start(["supernode", "register", str(Path(key).resolve()), CONNECTION], env, Path(tmp))
                 for key in public_keys}
        ids, errors = {}, []
        for key, proc in procs.items():  # every one waited for, then the first failure told
            try:
                ids[Path(key)] = int(_flwr_result(proc, "supernode register")["node-id"])
            except AdamodalError as err:
                errors.append(f"{key}: {err}")
        if errors:
            raise AdamodalError("; ".join(errors))
        return ids


def list_nodes(*, superlink: str, certificates: Path | None, insecure: bool) -> list[dict]:
    """The SuperNodes the SuperLink knows (``flwr supernode ls``): node id, status (``registered``,
    ``online``, ``offline``), times."""
    with tempfile.TemporaryDirectory(prefix="adamodal-flwr-") as tmp:
        env = flower_env(write_flower_home(Path(tmp) / "home", superlink, certificates, insecure))
        return list(_flwr(["supernode", "ls", CONNECTION], env, Path(tmp)).get("nodes", []))


@dataclass
class RunResult:
    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed"
    details: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def _flwr_start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([executable("flwr"), *args, "--format", "json"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _flwr_result(proc: subprocess.Popen, what: str) -> dict:
    out, err = proc.communicate()
    text = out.strip()
    try:
        payload = json.loads(text[text.index("{"):]) if "{" in text else {}
    except ValueError:
        payload = {}
    if proc.returncode != 0 or not payload.get("success", False):
        reason = payload.get("error-message") or (err.strip() or text or "no output").splitlines()[-1]
        # flwr puts the connection it used in front of the error
        reason = " ".join(line for line in reason.splitlines() if line.strip() and not line.startswith("Using SuperLink"))
        raise AdamodalError(f"flwr {what} failed: {reason}")
    return payload


def _flwr(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    return _flwr_result(_flwr_start(args, env, cwd), args[0])


def submit(cfg: Config, out: Path, *, superlink: str, certificates: Path | None, insecure: bool,
           simulation: bool = False, resume: bool = False, force: bool = False,
           timeout: float = DEFAULT_TIMEOUT, wait: float = DEFAULT_WAIT, poll_s: float = 2.0,
           log: Callable[[str], None] = print) -> RunResult:
    """Submit one run to the SuperLink at ``superlink`` and wait for it to finish."""
    check_security(certificates, insecure)
    with tempfile.TemporaryDirectory(prefix="adamodal-flwr-") as tmp:
        home = write_flower_home(Path(tmp) / "home", superlink, certificates, insecure)
        env = flower_env(home)
        app_dir = write_app(Path(tmp) / "app", cfg, out, resume=resume, force=force, timeout=timeout, wait=wait)
        args = ["run", str(app_dir), CONNECTION]
        if simulation:
            n = int(cfg["clients.multimodal"]) + int(cfg["clients.image_only"]) + int(cfg["clients.text_only"])
            args += ["--federation-config", f"num-supernodes={n} client-resources-num-cpus=1"]
        t0 = time.monotonic()
        started = _flwr(args, env, Path(tmp))
        run_id = int(started["run-id"])
        log(f"run {run_id} submitted to {superlink}; waiting for it to finish")
        return wait_for_run(run_id, superlink, certificates, insecure, home, t0=t0, poll_s=poll_s, log=log)


def wait_for_run(run_id: int, superlink: str, certificates: Path | None, insecure: bool, home: Path, *,
                 t0: float, poll_s: float = 2.0, log: Callable[[str], None] = print) -> RunResult:
    """Poll the run's status through the SuperLink's Control API until it has finished.

    In process (Flower's own Control API client) rather than by ``flwr ls`` every few
    seconds: one ``flwr`` start-up costs seconds of CPU that the clients need."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.common.serde import run_from_proto
    from flwr.proto.control_pb2 import ListRunsRequest

    old_home = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(home)  # Flower's client reads its settings from there
    try:
        conn = SuperLinkConnection(
            name=CONNECTION, address=superlink, insecure=insecure,
            root_certificates=None if certificates is None else str(Path(certificates, CA_CERT).resolve()))
        client = init_http_client_from_connection(conn)
        try:
            last = ""
            while True:
                time.sleep(poll_s)
                res = client.ListRuns(ListRunsRequest(run_id=run_id))
                run = run_from_proto(res.run_dict[run_id])
                st = run.status
                status = f"{st.status}:{st.sub_status}" if st.sub_status else st.status
                if status != last:
                    log(f"run {run_id}: {status}")
                    last = status
                if st.status == "finished":
                    return RunResult(run_id, status, st.details, time.monotonic() - t0)
        finally:
            client.close()
    finally:
        if old_home is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = old_home
