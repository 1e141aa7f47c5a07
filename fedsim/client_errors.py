"""A client exception becomes an error reply the server can name: one line of cause, the traceback kept aside.

Every engine turns a raising ClientApp into a reply `Message` whose `Error.reason` is one
line, "<ExceptionType>: <message>" (e.g. "IndexError: index out of range in self"), so the
strategy can stop the run naming client, round and cause. Flower's simulation engine would
otherwise send "<class 'flwr...ClientAppException'>:<'\\nException ClientAppException
occurred. Message: ...'>", which loses the exception type. The full traceback is appended to
the run directory's `client_errors.log` (and logged at debug level on the `fedsim.client` logger).
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


def log_client_error(exc: BaseException, message: Message, context: Context | None, log_path: str | Path | None) -> None:
    """Append the traceback to `log_path` (one write, so concurrent clients do not interleave) and log it at debug level."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    entry = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {_describe(message, context)}\n{tb}\n"
    logger.debug("client error (%s):\n%s", _describe(message, context), tb)
    if not log_path:
        return
    try:
        fd = os.open(str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, entry.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError:  # the run directory may be gone (e.g. removed by the user); the reply still carries the cause
        pass


def client_error_reply(message: Message, exc: BaseException, context: Context | None = None, log_path: str | Path | None = None) -> Message:
    """The error reply to `message` for a client that raised `exc`; the traceback goes to `log_path`."""
    log_client_error(exc, message, context, log_path)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=one_line_reason(exc)), reply_to=message)


class GuardedClientApp(ClientApp):
    """`app`, except that an exception becomes a one-line error reply (and a traceback in `log_path`).

    Picklable (Ray ships it to its actors): it holds the wrapped app and a path string only.
    """

    def __init__(self, app: ClientApp, log_path: str | Path | None = None):
        super().__init__()
        self.app = app
        self.log_path = str(Path(log_path).resolve()) if log_path else None

    def __call__(self, message: Message, context: Context) -> Message:
        try:
            return self.app(message, context)
        except Exception as exc:  # noqa: BLE001 - every client failure is reported, never raised into the engine
            return client_error_reply(message, exc, context, self.log_path)


def guard_client_errors(message: Message, context: Context, call_next) -> Message:
    """The same as a Flower mod (`ClientApp(mods=[guard_client_errors])`), for the deployment engine.

    The traceback goes to the file named by $FEDSIM_CLIENT_ERROR_LOG, if set (debug log otherwise).
    """
    try:
        return call_next(message, context)
    except Exception as exc:  # noqa: BLE001
        return client_error_reply(message, exc, context, os.environ.get("FEDSIM_CLIENT_ERROR_LOG"))
