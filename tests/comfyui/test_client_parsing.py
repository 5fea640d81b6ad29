"""Pure parsing of what a real ComfyUI sends: 400 bodies, WebSocket frames, history."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from storyboard.comfyui.events import (
    Cached,
    ExecutionFailed,
    ExecutionInterrupted,
    Finished,
    NodeExecuting,
    Preview,
    Progress,
    QueueStatus,
    RunEnded,
    Started,
    parse_binary_frame,
    parse_text_frame,
)
from storyboard.comfyui.rejection import abbreviate_choices, describe_rejection, validation_error
from storyboard.comfyui.results import OutputImage, result_from_history
from storyboard.comfyui.stream import queue_snapshot
from storyboard.comfyui.transport import check_output_image
from storyboard.comfyui.uploads import content_name
from storyboard.errors import (
    ComfyUIExecutionError,
    ComfyUIInterruptedError,
    ComfyUIProtocolError,
    ComfyUIValidationError,
    ReferenceImageError,
    UnsafeNameError,
    is_retryable,
)
from tests.support.paths import FIXTURES

ERRORS: dict[str, Any] = json.loads((FIXTURES / "errors.json").read_text())
PROBE: dict[str, Any] = json.loads((FIXTURES / "protocol_probe.json").read_text())


def _body(case: str) -> Any:
    return ERRORS[case]["body"]


def test_value_not_in_list_names_node_class_input_value_and_choices() -> None:
    lines = describe_rejection(_body("ckpt_name_not_in_list"))
    assert lines[0] == (
        "ComfyUI rejected the prompt (prompt_outputs_failed_validation): "
        "Prompt outputs failed validation"
    )
    assert lines[1:] == [
        "  node 4 (CheckpointLoaderSimple) input ckpt_name: Value not in list: got "
        "'no_such_model.safetensors'; allowed: 'garbage.safetensors', "
        "'tiny_sd15_random.safetensors'"
    ]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "lora_name_not_in_list",
            "node 10 (LoraLoaderModelOnly) input lora_name: Value not in list: "
            "got 'no_such_lora.safetensors'; allowed: 'tiny_sd15_lora.safetensors'",
        ),
        ("required_input_missing", "node 6 (CLIPTextEncode) input text: Required input is missing"),
        (
            "value_smaller_than_min",
            "node 5 (EmptyLatentImage) input width: Value 8 smaller than min of 16: got 8",
        ),
        (
            "value_bigger_than_max",
            "node 3 (KSampler) input steps: Value 100000 bigger than max of 10000: got 100000",
        ),
        (
            "invalid_input_type",
            "node 3 (KSampler) input steps: Failed to convert an input value to a INT value "
            "(\"steps, two, invalid literal for int() with base 10: 'two'\"): got 'two'",
        ),
        (
            "return_type_mismatch",
            "node 3 (KSampler) input model: Return type mismatch between linked nodes "
            "('model, received_type(CLIP) mismatch input_type(MODEL)')",
        ),
    ],
)
def test_each_captured_node_error_is_one_line(case: str, expected: str) -> None:
    lines = describe_rejection(_body(case))
    assert [line.strip() for line in lines[1:]] == [expected]


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("unknown_class_type", "missing_node_type"),
        ("no_outputs", "prompt_no_outputs"),
        ("no_prompt_key", "no_prompt"),
        ("invalid_prompt_id", "invalid_prompt_id"),
        ("uppercase_prompt_id", "invalid_prompt_id"),
    ],
)
def test_top_level_errors_name_their_type(case: str, kind: str) -> None:
    error = validation_error(_body(case))
    assert isinstance(error, ComfyUIValidationError)
    assert f"({kind})" in str(error)
    assert error.body == _body(case)
    assert not is_retryable(error)


def test_missing_node_type_names_the_class_and_node() -> None:
    message = str(validation_error(_body("unknown_class_type")))
    assert "KSamplerDoesNotExist" in message
    assert "Node ID '#3'" in message


def test_long_choice_lists_are_abbreviated() -> None:
    samplers = PROBE["GET /object_info/KSampler"]["KSampler"]["input"]["required"]["sampler_name"]
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "failed"},
        "node_errors": {
            "3": {
                "class_type": "KSampler",
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "sampler_name: 'nope' not in [...]",
                        "extra_info": {
                            "input_name": "sampler_name",
                            "input_config": samplers,
                            "received_value": "nope",
                        },
                    }
                ],
            }
        },
    }
    (line,) = describe_rejection(body)[1:]
    hidden = len(samplers[0]) - 5
    assert line.endswith(
        f"allowed: 'euler', 'euler_cfg_pp', 'euler_ancestral', 'euler_ancestral_cfg_pp', "
        f"'heun', ... (+{hidden} more)"
    )


def test_combo_choices_in_the_newer_encoding_are_listed() -> None:
    assert abbreviate_choices(["a", "b"]) == "'a', 'b'"
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "failed"},
        "node_errors": {
            "12": {
                "class_type": "UNETLoader",
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "extra_info": {
                            "input_name": "unet_name",
                            "input_config": ["COMBO", {"options": ["flux2.safetensors"]}],
                            "received_value": "x",
                        },
                    }
                ],
            }
        },
    }
    assert describe_rejection(body)[1].endswith("got 'x'; allowed: 'flux2.safetensors'")


def test_a_body_without_the_error_shape_still_gives_a_message() -> None:
    assert describe_rejection("<html>Bad Request</html>") == [
        "ComfyUI rejected the prompt: '<html>Bad Request</html>'"
    ]


def _trace() -> list[Any]:
    lines = (FIXTURES / "ws_trace.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_captured_run_parses_to_the_expected_event_sequence() -> None:
    messages = [parse_text_frame(json.dumps(entry["msg"])) for entry in _trace() if "msg" in entry]
    events = [m for m in messages if m is not None and not isinstance(m, QueueStatus)]
    pid = "3bcc5e43-ee9c-4b6c-9dff-5b7e77b72251"
    assert events == [
        Started(pid),
        Cached(pid, ()),
        NodeExecuting(pid, "4"),
        NodeExecuting(pid, "5"),
        NodeExecuting(pid, "7"),
        NodeExecuting(pid, "6"),
        NodeExecuting(pid, "3"),
        Progress(pid, "3", 1, 2),
        Progress(pid, "3", 2, 2),
        NodeExecuting(pid, "8"),
        NodeExecuting(pid, "9"),
        Finished(pid),
        RunEnded(pid),
    ]
    statuses = [m.queue_remaining for m in messages if isinstance(m, QueueStatus)]
    assert statuses == [0, 1, 1, 0]


def test_execution_error_and_interrupt_frames_carry_node_and_message() -> None:
    failure = [
        parse_text_frame(json.dumps(m))
        for m in ERRORS["execution_error_garbage_ckpt"]["ws_messages"]
    ]
    (error,) = [m for m in failure if isinstance(m, ExecutionFailed)]
    assert error.node_id == "4"
    assert error.node_type == "CheckpointLoaderSimple"
    assert error.exception_message == "Error while deserializing header: header too large"
    interrupted = [
        parse_text_frame(json.dumps(m))
        for m in ERRORS["execution_interrupted"]["ws_messages"]
        if "type" in m
    ]
    (stop,) = [m for m in interrupted if isinstance(m, ExecutionInterrupted)]
    assert (stop.node_id, stop.node_type) == ("3", "KSampler")


def test_unknown_message_types_are_ignored_and_garbage_is_a_protocol_error() -> None:
    assert parse_text_frame('{"type": "crystools.monitor", "data": {"cpu": 3}}') is None
    with pytest.raises(ComfyUIProtocolError):
        parse_text_frame("<html>")
    with pytest.raises(ComfyUIProtocolError):
        parse_text_frame('{"type": "status"}')


def test_binary_preview_type_1_and_type_4_decode() -> None:
    jpeg = b"\xff\xd8\xff" + bytes(2_000_000)  # previews can exceed 1 MiB
    assert parse_binary_frame(struct.pack(">II", 1, 1) + jpeg) == Preview(None, "jpeg", jpeg)
    assert parse_binary_frame(struct.pack(">II", 1, 2) + b"png") == Preview(None, "png", b"png")
    metadata = json.dumps(
        {
            "node_id": "3",
            "prompt_id": "243d3647-24ee-409c-84e1-e68fdc4734e2",
            "image_type": "image/jpeg",
        }
    ).encode()
    frame = struct.pack(">II", 4, len(metadata)) + metadata + jpeg
    assert parse_binary_frame(frame) == Preview(
        "243d3647-24ee-409c-84e1-e68fdc4734e2", "jpeg", jpeg
    )
    assert parse_binary_frame(struct.pack(">II", 3, 0)) is None
    with pytest.raises(ComfyUIProtocolError):
        parse_binary_frame(b"\x00\x00")
    with pytest.raises(ComfyUIProtocolError):
        parse_binary_frame(struct.pack(">II", 4, 999) + b"{}")


def test_history_gives_output_images_and_times() -> None:
    history = json.loads((FIXTURES / "history.json").read_text())
    pid = "3bcc5e43-ee9c-4b6c-9dff-5b7e77b72251"
    result = result_from_history(pid, history[pid])
    assert result.images == [OutputImage("sd_tiny_00004_.png", "", "output", "9")]
    assert result.cached is False
    assert result.started_at is not None and result.finished_at is not None
    assert result.finished_at > result.started_at


def test_history_of_a_failed_run_raises_the_execution_error() -> None:
    case = ERRORS["execution_error_garbage_ckpt"]
    entry = {"outputs": {}, "status": case["history_status"]}
    with pytest.raises(ComfyUIExecutionError) as caught:
        result_from_history(case["post"]["body"]["prompt_id"], entry)
    assert caught.value.node_id == "4"
    assert caught.value.node_type == "CheckpointLoaderSimple"
    assert "header too large" in caught.value.exception_message
    assert caught.value.exception_type == "safetensors._safetensors_rust.SafetensorError"
    # A checkpoint the real server cannot load fails the same way every time.
    assert not is_retryable(caught.value)


def test_history_of_an_interrupted_run_raises_interrupted() -> None:
    case = ERRORS["execution_interrupted"]
    entry = {"outputs": case["history_outputs"], "status": case["history_status"]}
    with pytest.raises(ComfyUIInterruptedError, match="KSampler"):
        result_from_history(case["post"]["body"]["prompt_id"], entry)


def test_the_picture_is_the_save_image_node_s_not_another_node_s_output() -> None:
    # ComfyUI lists outputs by node in no promised order; a custom node may save an output
    # of its own (a debug save), and a crop node's preview is a temp image.
    entry = {
        "outputs": {
            "31": {"images": [{"filename": "debug.png", "subfolder": "", "type": "output"}]},
            "40": {"images": [{"filename": "crop.png", "subfolder": "", "type": "temp"}]},
            "9": {"images": [{"filename": "frame.png", "subfolder": "", "type": "output"}]},
        },
        "status": {"status_str": "success", "completed": True, "messages": []},
    }
    result = result_from_history("p", entry)
    assert result.image_of(("9",)) == OutputImage("frame.png", "", "output", "9")
    assert result.image_of(()) == OutputImage("debug.png", "", "output", "31")  # no node known
    assert result.image_of(("40",)) is None  # a temp preview is never the picture


def test_fully_cached_history_is_reported_as_cached() -> None:
    entry = {
        "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}},
        "status": {
            "status_str": "success",
            "completed": True,
            "messages": [["execution_cached", {"nodes": ["4", "9"], "prompt_id": "p"}]],
        },
    }
    assert result_from_history("p", entry).cached is True


def test_queue_snapshot_reads_running_and_pending_ids_in_order() -> None:
    body = PROBE["GET /queue (1 running, 2 pending)"]
    assert queue_snapshot(body) == (
        ["1c74b270-af13-4913-bd8e-e1de49bc7658"],
        ["49029762-0c63-4a7b-915b-e0d700fb4b93", "841a6792-5a9f-4848-b616-bf179dcc02ff"],
    )


@pytest.mark.parametrize(
    ("filename", "subfolder"),
    [
        ("../x.png", ""),
        ("..", ""),
        ("a/b.png", ""),
        ("a\\b.png", ""),
        ("a.png", "../up"),
        ("a.png", "/etc"),
        ("", ""),
    ],
)
def test_unsafe_output_names_are_refused(filename: str, subfolder: str) -> None:
    with pytest.raises(UnsafeNameError, match="unsafe"):
        check_output_image(filename, subfolder, "output")


def test_content_names_depend_on_bytes_and_sniffed_format() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"one"
    assert content_name(png).endswith(".png")
    assert content_name(png) == content_name(bytes(png))
    assert content_name(png) != content_name(png + b"!")
    assert len(content_name(png)) == 32 + len(".png")
    assert content_name(b"\xff\xd8\xff\xe0rest").endswith(".jpg")
    assert content_name(b"RIFF\x00\x00\x00\x00WEBPVP8 ").endswith(".webp")
    with pytest.raises(ReferenceImageError, match=r"hero\.png"):
        content_name(b"not an image", what="reference image 'hero.png'")
