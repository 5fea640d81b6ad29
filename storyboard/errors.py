"""One exception tree for the whole library, and the one retry predicate.

    StoryboardError
    ├── ConfigError                  invalid settings (names the variable)
    ├── InvalidIdError               an id that may not be used in a file path
    ├── StoreError
    │   ├── StoreLockedError         the DuckDB file stayed locked past the budget   [R]
    │   ├── ImportDataError          a row of an import is invalid (row and field)
    │   └── NotFoundError            no such project / sentence / character
    ├── ComfyUIError
    │   ├── ComfyUIConnectionError   refused, reset or dropped connection          [R]
    │   ├── ComfyUIUnavailableError  unreachable past STORYBOARD_RECONNECT_WAIT_S: the
    │   │   │                        lane is set aside (the attempt fails once)
    │   │   └── ComfyUIStalledError  answers, but its queue made no progress for
    │   │                            STORYBOARD_STALL_S while our prompt waited in it
    │   ├── ComfyUIServerError       5xx answer                                     [R]
    │   ├── ComfyUIProtocolError     non-JSON answer, no prompt_id, unsafe name     [R]
    │   ├── ComfyUITimeoutError      run over its budget (stopped on the server)    [R]
    │   ├── ComfyUIExecutionError    execution_error from a node: [R] unless a loader
    │   │                            node could not load its file (not a model, bad
    │   │                            header); out of memory is retried wherever it hit
    │   ├── ComfyUIInterruptedError  execution_interrupted, or a prompt lost       [R]
    │   ├── ComfyUIValidationError   400 from /prompt; the same graph never passes
    │   ├── UnsafeNameError          a file or folder name that would leave its folder
    │   └── OutputTooLargeError      a file bigger than the download cap
    ├── WorkflowError
    │   ├── WorkflowFormatError      not JSON, UI-format export, missing slot
    │   └── WorkflowValidationError  graph does not match the server's /object_info
    ├── ImageError
    │   ├── ImageDecodeError         bytes that are not a complete image            [R]
    │   ├── ImageSizeError           an output of another size than was asked for   [R]
    │   └── ImageBombError           more pixels than the configured limit
    ├── UnsafePathError              a link or non-regular file below the data
    │                                directory (never followed, never written through)
    ├── LaneBusyError                the GPU lane stayed held past the wait (another
    │                                live batch, or a slot a restart left behind)
    └── ReferenceImageError          a character reference that is missing, not an
                                     image, too large or outside the project

[R] = retryable.

Only `is_retryable` decides whether an attempt may be repeated; every retry
mechanism asks it: Prefect task retries, and the library's four waiting loops
(the store's lock wait, the WebSocket reconnect, waiting for ComfyUI to come up,
waiting for a finished prompt's history), which all sleep per
`storyboard.backoff` and stay inside their own time bound.
"""

from __future__ import annotations


class StoryboardError(Exception):
    """Base of every error this library raises on purpose."""

    # Seconds the failed attempt ran on the GPU, when it ran at all and that is known: set
    # where a render failed after its prompt started, recorded on the attempt's job.
    render_s: float | None = None


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
    # The prompt the error is about, when one was submitted (recorded on the failed job).
    prompt_id: str | None = None


class ComfyUIConnectionError(ComfyUIError):
    pass


class ComfyUIUnavailableError(ComfyUIError):
    """The server stayed away longer than the reconnect wait: stop feeding it, do not retry."""


class ComfyUIStalledError(ComfyUIUnavailableError):
    """The server answers but executes nothing (a hung node, a wedged queue): set aside as an
    unreachable one is, until what it was running changes (`running`: those prompt ids)."""

    def __init__(self, message: str, running: tuple[str, ...]) -> None:
        super().__init__(message)
        self.running = running


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
        self,
        message: str,
        *,
        node_id: str | None,
        node_type: str | None,
        exception_message: str,
        exception_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_message = exception_message
        # ComfyUI's full name of the Python exception (`torch.OutOfMemoryError`), if sent.
        self.exception_type = exception_type

    @property
    def transient(self) -> bool:
        """A failure of the moment (memory, a device or a connection), not of the graph."""
        text = f"{self.exception_type or ''} {self.exception_message}".lower()
        return any(mark in text for mark in _TRANSIENT_MARKS)

    @property
    def unloadable_file(self) -> bool:
        """A loader node failed for a reason other than a transient one: the file it names is
        not a model the server can load, and loading it again gives the same answer."""
        return _is_loader(self.node_type) and not self.transient


class ComfyUIInterruptedError(ComfyUIError):
    pass


class ComfyUIValidationError(ComfyUIError):
    def __init__(self, message: str, body: object = None) -> None:
        super().__init__(message)
        self.body = body


class OutputTooLargeError(ComfyUIError):
    pass


class UnsafeNameError(ComfyUIError):
    """A name from or for the server that would escape its folder: refused, never retried."""


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


class ImageSizeError(ImageError):
    pass


class ImageBombError(ImageError):
    pass


class UnsafePathError(StoryboardError):
    def __init__(self, message: str, *, link: bool = False) -> None:
        super().__init__(message)
        self.link = link  # refused because it is (or passes through) a symbolic link


class LaneBusyError(StoryboardError):
    """The lane stayed taken past STORYBOARD_QUEUE_TIMEOUT_S: not retried, the run ends."""


class ReferenceImageError(StoryboardError):
    pass


# What ComfyUI reports for a failure that another try may not meet: out of memory (torch's
# `OutOfMemoryError`, "CUDA out of memory", ComfyUI's own OOM tip), a connection that dropped.
_TRANSIENT_MARKS = (
    "outofmemory",
    "out of memory",
    "ran out of memory",
    "connectionerror",
    "connection reset",
    "connection aborted",
    "connection refused",
    "timeouterror",
)


def _is_loader(node_type: str | None) -> bool:
    """UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader, LoraLoader, LoraLoaderModelOnly,
    CheckpointLoaderSimple, ...: the nodes that read a model file from the server's disk."""
    return node_type is not None and "Loader" in node_type


_RETRYABLE: tuple[type[BaseException], ...] = (
    ComfyUIConnectionError,
    ComfyUIServerError,
    ComfyUIProtocolError,
    ComfyUITimeoutError,
    ComfyUIExecutionError,
    ComfyUIInterruptedError,
    ImageDecodeError,
    ImageSizeError,
    StoreLockedError,
)


def is_retryable(exc: BaseException) -> bool:
    """True when repeating the same attempt later may succeed.

    Our own errors are classified by type, and an execution error also by its node and
    exception: a loader that cannot load its file fails the same way every time, while out
    of memory or a dropped connection may pass on the next try. Anything else (a bug, a foreign
    exception that escaped conversion) is not retried: retrying a bug only
    hides it and burns GPU time.
    """
    if isinstance(exc, ComfyUIExecutionError) and exc.unloadable_file:
        return False
    return isinstance(exc, _RETRYABLE)
