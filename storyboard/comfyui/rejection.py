"""Turn the body of a 400 answer to `POST /prompt` into a ComfyUIValidationError.

The message has a headline (the top-level error) and then one line per node
error: node id, class, input, what is wrong, the value received and, for list
inputs, the allowed values abbreviated, e.g.

    ComfyUI rejected the prompt: Prompt outputs failed validation
      node 10 (LoraLoaderModelOnly) input lora_name: Value not in list: got
      'x.safetensors'; allowed: 'a.safetensors', 'b.safetensors'
"""

from __future__ import annotations

from typing import Any

from storyboard.errors import ComfyUIValidationError

MAX_CHOICES_SHOWN = 5
_MAX_VALUE_CHARS = 80


def validation_error(body: Any) -> ComfyUIValidationError:
    """Build the error for a parsed 400 body (a dict with `error` and `node_errors`)."""
    return ComfyUIValidationError("\n".join(describe_rejection(body)), body=body)


def describe_rejection(body: Any) -> list[str]:
    """The headline and one line per node error, in node id order."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return [f"ComfyUI rejected the prompt: {_short(body, 200)}"]
    kind = str(error.get("type") or "unknown")
    message = str(error.get("message") or kind).strip()
    details = str(error.get("details") or "").strip()
    headline = f"ComfyUI rejected the prompt ({kind}): {message}"
    if details and details != message:
        headline += f" [{details}]"
    lines = [headline]
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id in sorted(node_errors, key=_node_order):
            lines.extend(_node_lines(node_id, node_errors[node_id]))
    return lines


def rejected_values(body: Any) -> set[str]:
    """The input values the node errors of a 400 body name (`received_value`), as text."""
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    values: set[str] = set()
    for entry in node_errors.values() if isinstance(node_errors, dict) else ():
        errors = entry.get("errors") if isinstance(entry, dict) else None
        for error in errors if isinstance(errors, list) else ():
            extra = error.get("extra_info") if isinstance(error, dict) else None
            if isinstance(extra, dict) and isinstance(extra.get("received_value"), str):
                values.add(extra["received_value"])
    return values


def abbreviate_choices(choices: list[Any], limit: int = MAX_CHOICES_SHOWN) -> str:
    """`'a', 'b', 'c'` or `'a', 'b', ... (+7 more)` when there are more than `limit`."""
    shown = ", ".join(_short(choice, _MAX_VALUE_CHARS) for choice in choices[:limit])
    hidden = len(choices) - limit
    return f"{shown}, ... (+{hidden} more)" if hidden > 0 else shown


def _node_lines(node_id: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"  node {node_id}: {_short(entry, 200)}"]
    where = f"node {node_id} ({entry.get('class_type', '?')})"
    errors = entry.get("errors")
    if not isinstance(errors, list) or not errors:
        return [f"  {where}: rejected without details"]
    return [f"  {where}{_describe_node_error(error)}" for error in errors]


def _describe_node_error(error: Any) -> str:
    if not isinstance(error, dict):
        return f": {_short(error, 200)}"
    extra_info = error.get("extra_info")
    extra: dict[str, Any] = extra_info if isinstance(extra_info, dict) else {}
    input_name = extra.get("input_name")
    text = f" input {input_name}" if input_name else ""
    text += f": {str(error.get('message') or error.get('type') or 'invalid').strip()}"
    details = str(error.get("details") or "").strip()
    choices = combo_choices(extra.get("input_config"))
    # value_not_in_list repeats the whole option list in `details`; we show it abbreviated.
    if details and details != input_name and choices is None:
        text += f" ({_short(details, 200)})"
    if "received_value" in extra:
        text += f": got {_short(extra['received_value'], _MAX_VALUE_CHARS)}"
    if choices is not None and error.get("type") == "value_not_in_list":
        text += f"; allowed: {abbreviate_choices(choices) if choices else '(none installed)'}"
    return text


def combo_choices(input_config: Any) -> list[Any] | None:
    """The option list of a COMBO input in either encoding, else None."""
    if not isinstance(input_config, list) or not input_config:
        return None
    first = input_config[0]
    if isinstance(first, list):
        return first
    if first == "COMBO" and len(input_config) > 1 and isinstance(input_config[1], dict):
        options = input_config[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _node_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _short(value: Any, limit: int) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
