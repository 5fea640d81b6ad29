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


def test_validation_error_lists_every_problem() -> None:
    exc = errors.WorkflowValidationError(["first problem", "second problem"])
    assert "first problem" in str(exc) and "second problem" in str(exc)
    assert exc.problems == ["first problem", "second problem"]
