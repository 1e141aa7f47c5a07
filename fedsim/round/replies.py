"""Stage `replies`: the clients' answers, with a client that ran and failed told apart from a lost message.

A failure inside a client is never silent: it stops the run in one line, or, with
`tolerate_client_errors: true`, is logged as a dropped update with its cause (`drop_reason: client-error`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Message
from flwr.common.constant import ErrorCode

from fedsim.client_errors import append_client_errors
from fedsim.round.messages import from_array_record
from fedsim.types import FedsimError

# Error codes of a client that ran and failed; NODE_UNAVAILABLE and the *_UNAVAILABLE codes are transport losses.
CLIENT_FAILURES = {
    ErrorCode.UNKNOWN,
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
    ErrorCode.MOD_FAILED_PRECONDITION,
    ErrorCode.CLIENT_APP_CRASHED,
}


@dataclass
class Replies:
    received: dict[int, tuple[dict, dict]] = field(default_factory=dict)  # client -> (encoded payload, metrics)
    errors: dict[int, str] = field(default_factory=dict)  # client -> one-line cause
    reasons: dict[int, str] = field(default_factory=dict)  # client -> the whole reason (its traceback, for client_errors.log)

    def payload(self, client: int) -> dict | None:
        return self.received[client][0] if client in self.received else None

    def metrics(self, client: int) -> dict | None:
        return self.received[client][1] if client in self.received else None


def collect_replies(replies: list[Message], client_of_node: dict[int, int], server_round: int, tolerate_errors: bool, error_log: Path | None = None) -> Replies:
    """The round's replies by client; client failures are appended to `error_log` (whole reasons) before anything is raised."""
    out = Replies()
    for reply in replies:
        if reply.has_error():
            if reply.error.code in CLIENT_FAILURES:  # else the node or message was lost: a plain no-reply
                client = client_of_node.get(reply.metadata.src_node_id, -1)
                out.errors[client] = one_line(reply.error.reason)
                out.reasons[client] = str(reply.error.reason or "")
            continue
        metrics = dict(reply.content["metrics"])
        out.received[int(metrics["client-id"])] = (from_array_record(reply.content["arrays"]), metrics)
    if out.reasons and error_log is not None:
        try:
            append_client_errors(error_log, server_round, out.reasons)
        except OSError:  # the run directory may be gone (e.g. removed by the user); the one-line cause still stops the run
            pass
    if out.errors and not tolerate_errors:
        client, cause = next(iter(sorted(out.errors.items())))
        more = f" (and {len(out.errors) - 1} more client(s))" if len(out.errors) > 1 else ""
        raise FedsimError(
            f"round {server_round}: client {client} failed{more}: {cause}; set tolerate_client_errors: true to log such failures as dropped updates instead"
        )
    return out


def one_line(reason) -> str:
    """The last non-empty line of an error reason (Flower may carry a whole traceback there)."""
    lines = [line.strip() for line in str(reason or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
