"""A warm deployment node: Flower's SuperExec with one long-lived process for every ClientApp task, and
Flower's SuperNode with a shorter idle poll.

**The warm SuperExec.** Flower 1.42 runs each message a SuperNode receives in a fresh `flwr-clientapp`
process: its SuperExec (`flower-superexec`, `--executor subprocess`) acquires the task from the
SuperNode's Runtime API and starts the process, which pulls the message with the task's token, runs
the ClientApp, pushes the reply and exits. For fedsim that process spends seconds importing torch and
transformers and rebuilding the runtime (backbone, tokenised data) around milliseconds of training
(benchmarks/README.md, "Deployment").

`superexec_main` is the same SuperExec (`flwr.supercore.superexec.run_superexec`: its task loop, its
Runtime API client, its plugin) with one change: the executor runs the task in this process instead
of spawning one. It does what `flwr-clientapp` does with the task's token (pull the message, context,
run and FAB; run the ClientApp; push the reply and the context; heartbeat meanwhile) with Flower's own
functions, and keeps the loaded ClientApp per FAB hash, so everything the ClientApp caches
(`fedsim.runtime.get_runtime`) survives from one message to the next. Tasks run one at a time, which
is what a SuperNode serving one client asks for. Flower 1.42's `flower-superexec` has no hook for a
custom local executor (`--executor` offers subprocess and kubernetes), so the executor is passed in by
replacing the factory that `run_superexec` calls; everything else is Flower's code path.

**The SuperNode's idle poll.** An idle Flower 1.42 SuperNode sleeps 3 s between pulls from the
SuperLink and 0.5 s between checks for its ClientApp's reply (`flwr.supernode.start_client_internal`,
fixed there). After a reply the node pulls once, finds nothing (the server is still aggregating) and
sleeps the full 3 s: every round waits about 3 s on it. `supernode_main` runs Flower's SuperNode with
both sleeps capped at `--poll-interval` (pins flwr 1.42.*, as pyproject.toml does).

On a machine of its own, a client runs the pair; `fedsim deploy-local` starts one pair per client:

    fedsim-supernode --poll-interval 0.5 --insecure --superlink HOST:9092 --isolation process --port 9094 ...
    fedsim-superexec --insecure --runtime-api-address 127.0.0.1:9094
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree, pull_objects
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

# A task can be acquired before its SuperNode has every object of the message from the SuperLink (and a
# reply listed before its objects reach the SuperLink); Flower then retries each missing object after 1 s,
# 2 s, ... (flwr.supercore.constant.PULL_INITIAL_BACKOFF), which on loopback is most of a round. fedsim's
# deployment processes retry after 20 ms, doubling up to 50 ms.
PULL_BACKOFF_S = 0.02
PULL_BACKOFF_CAP_S = 0.05
# No cap on tries: Flower's patience stays its max_time (2 h), not 500 tries, which at 50 ms would be 25 s.
RETRY = {"initial_backoff": PULL_BACKOFF_S, "backoff_cap": PULL_BACKOFF_CAP_S, "max_tries_per_object": None}


def pull_task_input(client: RuntimeHttpClient):
    """`flwr.supernode.runtime.run_clientapp.pull_task_input` with a short retry for objects not there yet:
    the task's message, context, run and FAB."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        **RETRY,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message does not carry its own id
    return message, context, run, fab


class WarmClientAppExecutor:
    """A Flower SuperExec executor (`flwr.supercore.superexec.executor.types.Executor`) that runs ClientApp
    tasks in its own process, one at a time, keeping each FAB's loaded ClientApp."""

    def __init__(self, root_certificates: bytes | None = None):
        self.root_certificates = root_certificates
        self.apps: dict[str, ClientApp] = {}
        self.tasks_run = 0

    def get_eligible_capacity(self, supported_task_types, *, insecure=False, root_certificates_path=None):
        return {t for t in supported_task_types if t == TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False, root_certificates_path=None) -> None:
        """Never waits: a task runs to its end inside `launch`."""

    def reconcile(self) -> None:
        """Nothing to maintain: there is no pool."""

    def close(self) -> None:
        self.apps.clear()

    def _client_app(self, run, fab) -> ClientApp:
        if fab.hash_str not in self.apps:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.apps[fab.hash_str]

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Run the task with `spec.token` to its end, as `flwr-clientapp --token` would, and report it accepted."""
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"fedsim-superexec runs ClientApp tasks only, not {spec.task_type}")
        client = RuntimeHttpClient.from_server_address(
            server_address=spec.runtime_api_address,
            insecure=spec.insecure,
            root_certificates=self.root_certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(spec.token)],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            reply = self._client_app(run, fab)(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 - reported to the SuperNode as flwr-clientapp reports it
            code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code, reason = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, "An exception was raised when attempting to load `ClientApp`"
            log(ERROR, "ClientApp raised an exception", exc_info=ex)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:  # noqa: BLE001 - the SuperNode learns of it from the task status
                log(ERROR, "Failed to push reply message", exc_info=ex)
                sub_status, details = SubStatus.FAILED, f"reply not pushed: {ex}"
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        self.tasks_run += 1
        log(INFO, "[fedsim-superexec] pid %d ran task %d (%s), ClientApp kept for %d FAB(s)", os.getpid(), self.tasks_run, sub_status, len(self.apps))
        return LaunchResult.accepted()


def superexec_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedsim-superexec",
        description="Flower's SuperExec for a SuperNode started with `--isolation process`, running every ClientApp task in "
        "this one long-lived process so that the ClientApp's runtime stays loaded between messages.",
    )
    parser.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT", help="the SuperNode's Runtime API (its --host and --port)")
    parser.add_argument("--insecure", action="store_true", help="connect to the Runtime API without TLS (loopback)")
    parser.add_argument("--root-certificates", metavar="PEM", help="CA certificate that signed the Runtime API's TLS certificate")
    parser.add_argument("--parent-pid", type=int, metavar="PID", help="exit when this process (the SuperNode) exits")
    args = parser.parse_args(argv)
    if not args.insecure and not args.root_certificates:
        parser.error("pass --insecure (loopback) or --root-certificates PEM")
    try:
        certificates = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    except OSError as exc:
        parser.error(f"--root-certificates {args.root_certificates}: {exc.strerror}")
    executor = WarmClientAppExecutor(certificates)
    superexec_loop = importlib.import_module("flwr.supercore.superexec.run_superexec")  # the module, not its function
    superexec_loop.get_executor = lambda *_args, **_kwargs: executor
    superexec_loop.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
    )


def shorten_object_pulls(module_name: str) -> None:
    """Make `module_name`'s Flower object pulls retry after PULL_BACKOFF_S (up to PULL_BACKOFF_CAP_S) instead of
    1 s, 2 s, ...: a message is listed before all of its objects have landed, and on loopback they land in
    milliseconds. Used for the SuperNode's pulls from the SuperLink and the ServerApp's pulls of replies."""
    module = importlib.import_module(module_name)
    module.pull_objects = functools.partial(pull_objects, **RETRY)


class _CappedSleep:
    """The `time` module with `sleep` capped at `cap` seconds."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name):
        return getattr(time, name)


def supernode_main(argv: list[str] | None = None) -> None:
    """`flower-supernode` with `--poll-interval S` (default 0.5) capping its idle sleeps; other arguments are Flower's."""
    parser = argparse.ArgumentParser(prog="fedsim-supernode", add_help=False)
    parser.add_argument("--poll-interval", type=float, default=0.5, metavar="S")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not 0.01 <= args.poll_interval <= 60:
        parser.error(f"--poll-interval {args.poll_interval}: must be between 0.01 and 60 seconds")
    if {"-h", "--help"} & set(rest):
        print("fedsim-supernode: flower-supernode with --poll-interval S (default 0.5 s; Flower's is 3 s) capping its idle sleeps.\n")
    node_loop = importlib.import_module("flwr.supernode.start_client_internal")
    node_loop.time = _CappedSleep(args.poll_interval)
    shorten_object_pulls("flwr.supernode.start_client_internal")
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["fedsim-supernode", *rest]
    sys.exit(flower_supernode())


if __name__ == "__main__":
    {"superexec": superexec_main, "supernode": supernode_main}[sys.argv.pop(1)]()
