"""One exception tree for the whole library, and the one retry predicate.

    StoryboardError
    ├── ConfigError                  invalid settings (names the variable)
    ├── InvalidIdError               an id that may not be used in a file path
    ├── StoreError
    │   ├── StoreLockedError         the DuckDB file stayed locked past the retry budget
    │   ├── ImportDataError          a row of an import is invalid (names row and field)
    │   └── NotFoundError            a project / sentence / character does not exist
    ├── ComfyUIError
    │   ├── ComfyUIConnectionError   network failure, refused connection, dropped socket   [retryable]
    │   ├── ComfyUIServerError       5xx answer                                           [retryable]
    │   ├── ComfyUIProtocolError     an answer that breaks the protocol (non-JSON, no prompt_id) [retryable]
    │   ├── ComfyUITimeoutError      a run exceeded its time budget (was stopped on the server) [retryable]
    │   ├── ComfyUIExecutionError    execution_error from a node                          [retryable]
    │   ├── ComfyUIInterruptedError  execution_interrupted                                [retryable]
    │   ├── ComfyUIValidationError   400 from /prompt; the same graph never passes
    │   └── OutputTooLargeError      a file bigger than the download cap
    ├── WorkflowError
    │   ├── WorkflowFormatError      not JSON, UI-format export, missing slot
    │   └── WorkflowValidationError  graph does not match the server's /object_info
    ├── ImageError
    │   ├── ImageDecodeError         bytes that are not a complete image               [retryable]
    │   └── ImageBombError           more pixels than the configured limit
    └── ReferenceImageError          a character reference that is missing, not an image,
                                     too large or outside the project's directory

Only `is_retryable` decides whether an attempt may be repeated; every retry
mechanism (Prefect task retries, the client's reconnect loop) asks it.
"""

from __future__ import annotations


class StoryboardError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(StoryboardError):
    pass


class InvalidIdError(StoryboardError, ValueError):
    pass


class StoreError(StoryboardError):
    pass


class StoreLockedError(StoreError):
    pass


class ImportDataError(StoreError):
    pass


class NotFoundError(StoreError):
    pass


class ComfyUIError(StoryboardError):
    pass


class ComfyUIConnectionError(ComfyUIError):
    pass


class ComfyUIServerError(ComfyUIError):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ComfyUIProtocolError(ComfyUIError):
    pass


class ComfyUITimeoutError(ComfyUIError):
    pass


class ComfyUIExecutionError(ComfyUIError):
    def __init__(
        self, message: str, *, node_id: str | None, node_type: str | None, exception_message: str
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_message = exception_message


class ComfyUIInterruptedError(ComfyUIError):
    pass


class ComfyUIValidationError(ComfyUIError):
    def __init__(self, message: str, body: object = None) -> None:
        super().__init__(message)
        self.body = body


class OutputTooLargeError(ComfyUIError):
    pass


class WorkflowError(StoryboardError):
    pass


class WorkflowFormatError(WorkflowError):
    pass


class WorkflowValidationError(WorkflowError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("workflow does not match the server:\n" + "\n".join(problems))
        self.problems = problems


class ImageError(StoryboardError):
    pass


class ImageDecodeError(ImageError):
    pass


class ImageBombError(ImageError):
    pass


class ReferenceImageError(StoryboardError):
    pass


_RETRYABLE: tuple[type[BaseException], ...] = (
    ComfyUIConnectionError,
    ComfyUIServerError,
    ComfyUIProtocolError,
    ComfyUITimeoutError,
    ComfyUIExecutionError,
    ComfyUIInterruptedError,
    ImageDecodeError,
    StoreLockedError,
)


def is_retryable(exc: BaseException) -> bool:
    """True when repeating the same attempt later may succeed.

    Our own errors are classified by type. Anything else (a bug, a foreign
    exception that escaped conversion) is not retried: retrying a bug only
    hides it and burns GPU time.
    """
    return isinstance(exc, _RETRYABLE)
