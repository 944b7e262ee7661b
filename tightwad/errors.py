"""The one error tree of Tightwad, and its single mapping to gRPC and HTTP.

    TightwadError               500 INTERNAL            base; never raised bare
    ├── ConfigError             400 INVALID_ARGUMENT    bad cluster file: key path, line, reason
    ├── InvalidRequestError     400 INVALID_ARGUMENT    a request we refuse
    │   ├── UnsupportedParameterError  400              a field we cannot honour (n > 1, ...)
    │   └── ContextLengthError  400 OUT_OF_RANGE        prompt + max_tokens exceed the context
    ├── AuthenticationError     401 UNAUTHENTICATED     missing or wrong token
    ├── NotFoundError           404 NOT_FOUND           unknown model, session, process, node
    ├── ConflictError           409 ALREADY_EXISTS      a name already in use
    ├── OverloadedError         429 RESOURCE_EXHAUSTED  queue full, no free session slot
    ├── ModelLoadError          422 FAILED_PRECONDITION missing file, not a GGUF, OOM, bad RPC
    ├── UnavailableError        503 UNAVAILABLE         engine/agent/controller down, not ready
    └── DeadlineError           504 DEADLINE_EXCEEDED   a wait ran past its deadline

Errors of libraries underneath are translated at the edge (``raise XError(...) from exc``), so
callers only ever see these. Unknown exceptions become a generic message outward, with the full
traceback in the log.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "ContextLengthError",
    "DeadlineError",
    "InvalidRequestError",
    "ModelLoadError",
    "NotFoundError",
    "OverloadedError",
    "TightwadError",
    "UnavailableError",
    "UnsupportedParameterError",
    "from_grpc_status",
]


class TightwadError(Exception):
    """Base of every error Tightwad raises on purpose."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    openai_type: ClassVar[str] = "server_error"
    openai_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def openai_body(self) -> dict[str, Any]:
        """The OpenAI-style error body: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.openai_type,
                "param": self.param,
                "code": self.openai_code,
            }
        }


class ConfigError(TightwadError):
    """A cluster file that does not validate. ``str()`` is ``KEY.PATH (line N): reason``."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    openai_type = "invalid_request_error"

    def __init__(self, path: str, reason: str, line: int | None = None, file: str | None = None):
        self.key_path = path
        self.reason = reason
        self.line = line
        self.file = file
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"{path or '<root>'}{where}: {reason}")


class InvalidRequestError(TightwadError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    openai_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    openai_code = "unsupported_parameter"


class ContextLengthError(InvalidRequestError):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE
    openai_code = "context_length_exceeded"


class AuthenticationError(TightwadError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"


class NotFoundError(TightwadError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    openai_type = "invalid_request_error"
    openai_code = "model_not_found"


class ConflictError(TightwadError):
    http_status = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    openai_type = "invalid_request_error"


class OverloadedError(TightwadError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"


class ModelLoadError(TightwadError):
    http_status = 422
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    openai_type = "invalid_request_error"


class UnavailableError(TightwadError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    openai_type = "server_error"
    openai_code = "service_unavailable"


class DeadlineError(TightwadError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    openai_type = "server_error"
    openai_code = "timeout"


_BY_CODE: dict[grpc.StatusCode, type[TightwadError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: ContextLengthError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.FAILED_PRECONDITION: ModelLoadError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.CANCELLED: UnavailableError,
}


def from_grpc_status(code: grpc.StatusCode, details: str | None) -> TightwadError:
    """Translate a gRPC status received from a peer back into our error tree."""
    cls = _BY_CODE.get(code, TightwadError)
    return cls(details or code.name.lower())
