"""A client exception becomes an error reply the server can name: one line of cause, and the traceback with it.

Every engine turns a raising ClientApp into a reply `Message` whose `Error.reason` is the client's
traceback followed, on its last line, by "<ExceptionType>: <message>" (e.g. "IndexError: index out
of range in self"). The server reports that last line (the run stops naming client, round and
cause) and appends the whole reason to the run directory's `client_errors.log`
(`append_client_errors`), so the traceback reaches the run directory from any engine, a
deployment's remote SuperNodes included. Flower's simulation engine would otherwise send
"<class 'flwr...ClientAppException'>:<'\\nException ClientAppException occurred. Message: ...'>",
which loses the exception type.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

CLIENT_ERRORS_LOG = "client_errors.log"
MAX_REASON_CHARS = 500

logger = logging.getLogger("fedsim.client")


def one_line_reason(exc: BaseException) -> str:
    """'Type: message' on one line (whitespace runs collapsed), at most MAX_REASON_CHARS characters."""
    text = " ".join(str(exc).split())
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def _describe(message: Message, context: Context | None) -> str:
    parts = [f"message type {message.metadata.message_type}", f"node {message.metadata.dst_node_id}"]
    try:
        config = message.content["config"]
        for key in ("server-round", "client-id", "client-ids"):
            if key in config:
                parts.append(f"{key} {config[key]}")
    except Exception:  # noqa: BLE001 - the description is best effort; a query has no config
        pass
    if context is not None and "partition-id" in context.node_config:
        parts.append(f"partition-id {context.node_config['partition-id']}")
    return ", ".join(parts)


def error_reason(exc: BaseException, message: Message, context: Context | None) -> str:
    """Where the failure happened and its traceback, then the one-line cause as the last line."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return f"{_describe(message, context)}, pid {os.getpid()}\n{tb}\n{one_line_reason(exc)}"


def client_error_reply(message: Message, exc: BaseException, context: Context | None = None) -> Message:
    """The error reply to `message` for a client that raised `exc`."""
    reason = error_reason(exc, message, context)
    logger.debug("client error: %s", reason)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


def append_client_errors(log_path: str | Path, server_round: int, reasons: dict[int, str]) -> None:
    """Append each failed client's whole error reason (its traceback, when it sent one) to `log_path`, in one write."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = "".join(f"--- {stamp} round {server_round}, client {client}: {reason.rstrip()}\n\n" for client, reason in sorted(reasons.items()))
    fd = os.open(str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)


class GuardedClientApp(ClientApp):
    """`app`, except that an exception becomes an error reply (see the module docstring).

    Picklable (Ray ships it to its actors): it holds the wrapped app only.
    """

    def __init__(self, app: ClientApp):
        super().__init__()
        self.app = app

    def __call__(self, message: Message, context: Context) -> Message:
        try:
            return self.app(message, context)
        except Exception as exc:  # noqa: BLE001 - every client failure is reported, never raised into the engine
            return client_error_reply(message, exc, context)


def guard_client_errors(message: Message, context: Context, call_next) -> Message:
    """The same as a Flower mod (`ClientApp(mods=[guard_client_errors])`): every engine, the deployment's included."""
    try:
        return call_next(message, context)
    except Exception as exc:  # noqa: BLE001
        return client_error_reply(message, exc, context)
