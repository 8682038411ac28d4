"""A warm ClientApp runner: one long-lived process per site runs the ClientApp's messages.

Flower 1.41's SuperNode, left to itself (``--isolation subprocess``), starts a new
``flwr-clientapp`` Python process for every message. Importing torch, Flower and adamodal and
preparing the client's data again costs seconds of CPU per message, more than a round of
training on cached features: a 3-site, 2-round job spent most of its minute starting
processes. With ``--isolation process`` the SuperNode leaves the launching to an outside
executor, and this module is that executor. It takes each task from the SuperNode's local
Runtime API with the same calls Flower's ``flower-superexec`` and ``flwr-clientapp`` make
(acquire a task and its token, pull the message and context, push the reply and the context
back), but runs the ClientApp the run's FAB names *in this process*, so imports and the
prepared client data stay warm between messages (``client_app.load_client`` keeps them).

Flower 1.41 has no long-lived ClientApp of its own: a separately started ``flower-superexec
--plugin-type clientapp`` (``--isolation process``) uses the same subprocess executor as
``--isolation subprocess``, one ``flwr-clientapp --token`` process per task, and that process
runs one task and exits; its warm executor pools are Kubernetes-only, one task per pod, and
not offered for ClientApp tasks (``WARM_EXECUTOR_TASK_TYPES``).

The ClientApp is the same object Flower would load; nothing about a method changes. A
ClientApp that raises is answered with Flower's own error reply, as ``flwr-clientapp`` does.

``python -m adamodal.flower.warm --runtime-api-address HOST:PORT -- flower-supernode ...``
starts the SuperNode command given after ``--`` (with ``--isolation process`` added) and
serves its tasks until the SuperNode exits or this process is asked to stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

logger = logging.getLogger("adamodal.flower.warm")

#: how often a runner asks its SuperNode for a task: every POLL_S right after a task (the next
#: phase's message usually follows within seconds), backing off to POLL_MAX_S while idle, so a
#: machine hosting many SuperNodes is not kept busy by their polling (Flower's executor: 1 s)
POLL_S = 0.05
POLL_MAX_S = 0.5
#: seconds a task may go on after its SuperNode exited before this process exits regardless
GRACE_S = 20.0
#: the ClientApp the runner imports before the first task, so that one is fast too
PRELOAD = "adamodal.flower.client_app"


def _client(address: str, component: str, token: str | None = None,
            root_certificates: bytes | None = None, max_tries: int | None = None) -> RuntimeHttpClient:
    retry = make_simple_http_retry_invoker()  # Flower's: retries a lost connection forever
    retry.max_tries = max_tries
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=root_certificates is None, root_certificates=root_certificates,
        interceptors=interceptors, retry_invoker=retry)


class Runner:
    """Runs the ClientApp tasks of one SuperNode in this process, one after another."""

    def __init__(self, address: str, root_certificates: bytes | None = None) -> None:
        self.address = address
        self.root_certificates = root_certificates
        self._apps: dict[str, ClientApp] = {}  # by FAB hash: installed and imported once
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.tasks = 0

    def _client_app(self, run, fab) -> ClientApp:  # noqa: ANN001 - Flower's Run and Fab
        if fab.hash_str not in self._apps:
            install_from_fab(fab.content, skip_prompt=True)
            self._apps[fab.hash_str] = self._load(run.fab_id, run.fab_version, fab.hash_str)
        return self._apps[fab.hash_str]

    def acquire(self, client: RuntimeHttpClient) -> str | None:
        """The token of the SuperNode's next ClientApp task, or None when there is none."""
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
        return res.token if res.HasField("task") and res.token else None

    def run_task(self, token: str) -> bool:
        """Run one task (what ``flwr-clientapp --token`` does, minus the process start).

        Returns whether the ClientApp completed; a failure is also reported to the SuperNode,
        with the error as the reply, exactly as Flower's own process reports it."""
        client = _client(self.address, "flwr-clientapp", token, self.root_certificates)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        t0 = time.monotonic()
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            message, context, run, fab = pull_task_input(client)
            reply = self._client_app(run, fab)(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 - reported to the SuperNode, as Flower does
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code, details = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, "An exception was raised when attempting to load `ClientApp`"
            logger.exception("ClientApp raised an exception")
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:  # noqa: BLE001
                logger.exception("failed to push the reply")
                sub_status = SubStatus.FAILED
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        self.tasks += 1
        logger.info("task %d (%s) %s in %.2f s", self.tasks, message.metadata.message_type if message else "?",
                    sub_status, time.monotonic() - t0)
        return sub_status == SubStatus.COMPLETED

    def serve(self, stop: Callable[[], bool], poll_s: float = POLL_S, poll_max_s: float = POLL_MAX_S) -> None:
        """Take and run tasks until ``stop()`` is true."""
        # one try per poll: while the SuperNode is starting or gone, fail fast and look at stop()
        client = _client(self.address, "SuperExec", None, self.root_certificates, max_tries=1)
        wait = poll_s
        try:
            while not stop():
                try:
                    token = self.acquire(client)
                except Exception as ex:  # noqa: BLE001 - the SuperNode is starting or gone
                    logger.debug("no task (%s)", ex)
                    token = None
                if token is None:
                    time.sleep(wait)
                    wait = min(poll_max_s, wait * 1.5)
                    continue
                self.run_task(token)
                wait = poll_s
        finally:
            client.close()


def supervise(supernode: list[str], address: str, root_certificates: Path | None = None,
              preload: str | None = PRELOAD) -> int:
    """Start the SuperNode with ``--isolation process`` and serve its tasks; returns its exit
    code. Stopping this process (SIGTERM / SIGINT) stops the SuperNode too."""
    proc = subprocess.Popen([*supernode, "--isolation", "process"])
    stopping = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    done = threading.Event()

    def _watch() -> None:
        proc.wait()
        stopping.set()
        # a task in flight keeps retrying its lost SuperNode (Flower's client never gives up):
        # exit anyway, so a service manager sees the site down and can restart it
        if not done.wait(GRACE_S):
            logger.error("the SuperNode exited (code %s) during a task; stopping", proc.returncode)
            os._exit(128 - proc.returncode if proc.returncode < 0 else proc.returncode or 1)

    threading.Thread(target=_watch, daemon=True).start()
    try:
        if preload:
            __import__(preload)  # torch, Flower and adamodal, while the SuperNode connects
        certs = None if root_certificates is None else Path(root_certificates).read_bytes()
        Runner(address, certs).serve(stopping.is_set)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        done.set()
    code = int(proc.returncode)
    if code in (0, -signal.SIGTERM):
        return 0
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adamodal.flower.warm", description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    p.add_argument("--runtime-root-certificates", type=Path, default=None,
                   help="CA of the Runtime API's TLS certificate (default: plain HTTP on loopback)")
    p.add_argument("supernode", nargs=argparse.REMAINDER, help="-- then the flower-supernode command")
    args = p.parse_args(argv)
    cmd = args.supernode[1:] if args.supernode[:1] == ["--"] else args.supernode
    if not cmd:
        p.error("give the flower-supernode command after --")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Flower's handlers would print every line a second time
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Runtime API request otherwise
    return supervise(cmd, args.runtime_api_address, args.runtime_root_certificates)


if __name__ == "__main__":
    sys.exit(main())
