import pytest

from storyboard import errors
from storyboard.errors import is_retryable


@pytest.mark.parametrize(
    "exc",
    [
        errors.ComfyUIConnectionError("refused"),
        errors.ComfyUIServerError("boom", 502),
        errors.ComfyUIProtocolError("no prompt_id"),
        errors.ComfyUITimeoutError("300 s"),
        errors.ComfyUIExecutionError(
            "x", node_id="3", node_type="KSampler", exception_message="oom"
        ),
        errors.ComfyUIInterruptedError("interrupted"),
        errors.ImageDecodeError("truncated"),
        errors.StoreLockedError("locked"),
    ],
)
def test_transient_failures_are_retryable(exc: Exception) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        errors.ComfyUIValidationError("lora not in list"),
        errors.WorkflowValidationError(["LoRA 'x' is not on the server"]),
        errors.WorkflowFormatError("UI export"),
        errors.ReferenceImageError("missing"),
        errors.ImageBombError("too many pixels"),
        errors.OutputTooLargeError("over cap"),
        errors.UnsafeNameError("../../x.png"),
        errors.InvalidIdError("../x"),
        errors.ConfigError("bad"),
        ValueError("a bug"),
        KeyError("a bug"),
    ],
)
def test_permanent_failures_are_not_retryable(exc: Exception) -> None:
    assert not is_retryable(exc)


def _failed_in(node_type: str, exception_type: str, message: str) -> errors.ComfyUIExecutionError:
    return errors.ComfyUIExecutionError(
        "x",
        node_id="1",
        node_type=node_type,
        exception_message=message,
        exception_type=exception_type,
    )


@pytest.mark.parametrize(
    "node_type",
    ["UNETLoader", "CLIPLoader", "VAELoader", "LoraLoaderModelOnly", "CheckpointLoaderSimple"],
)
def test_a_loader_that_cannot_load_its_file_is_not_retried(node_type: str) -> None:
    header = "Error while deserializing header: header too large"
    assert not is_retryable(
        _failed_in(node_type, "safetensors._safetensors_rust.SafetensorError", header)
    )
    assert not is_retryable(_failed_in(node_type, "RuntimeError", "not a model file"))


@pytest.mark.parametrize(
    ("node_type", "exception_type", "message"),
    [
        ("UNETLoader", "torch.OutOfMemoryError", "Allocation on device"),
        ("VAELoader", "RuntimeError", "CUDA out of memory. Tried to allocate 2.00 GiB"),
        ("KSampler", "torch.OutOfMemoryError", "Allocation on device"),
        ("CLIPLoader", "ConnectionResetError", "Connection reset by peer"),
        ("KSampler", "RuntimeError", "CUDA error: an illegal memory access"),
    ],
)
def test_transient_execution_errors_are_retried_in_any_node(
    node_type: str, exception_type: str, message: str
) -> None:
    assert is_retryable(_failed_in(node_type, exception_type, message))


def test_validation_error_lists_every_problem() -> None:
    exc = errors.WorkflowValidationError(["first problem", "second problem"])
    assert "first problem" in str(exc) and "second problem" in str(exc)
    assert exc.problems == ["first problem", "second problem"]
