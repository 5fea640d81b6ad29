"""Reading workflow files and finding their slots: markers, class fallbacks, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from storyboard.errors import WorkflowFormatError
from storyboard.workflow import LoraChoice, RenderParams, inject, load_workflow, parse_workflow
from tests.support.workflow import FIXTURES, FLUX, SD, nodes_of

UI_EXPORT = {
    "last_node_id": 9,
    "last_link_id": 9,
    "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [42, "fixed", 20]}],
    "links": [[1, 4, 0, 3, 0, "MODEL"]],
    "version": 0.4,
}


def write(tmp_path: Path, content: str, name: str = "graph.json") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def flux_graph() -> dict:
    return json.loads(FLUX.read_text())


def test_shipped_workflows_map_their_markers() -> None:
    flux = load_workflow(FLUX)
    assert flux.name == "flux-2"
    assert flux.slots.prompt == (("5", "text"),)
    assert flux.slots.negative == ()
    assert flux.slots.seed == (("12", "noise_seed"),)
    assert set(flux.slots.size) == {"14", "15"}
    assert flux.slots.lora == "4"
    assert flux.slots.output == ("18",)
    assert flux.slots.reference is not None
    assert flux.slots.reference.end == "10"
    assert flux.slots.reference.image == ("7", "image")
    assert flux.slots.reference.nodes == {"7", "8", "9", "10"}  # the shared VAELoader stays

    sd = load_workflow(SD)
    assert (sd.slots.prompt, sd.slots.negative) == ((("3", "text"),), (("4", "text"),))
    assert (sd.slots.seed, sd.slots.lora, sd.slots.reference) == ((("6", "seed"),), "2", None)


def test_unmarked_graph_falls_back_on_class_types() -> None:
    # The captured SD graph has plain titles ("Positive"), no markers.
    workflow = load_workflow(FIXTURES / "sd_tiny_api.json")
    assert workflow.slots.prompt == (("6", "text"),)
    assert workflow.slots.negative == (("7", "text"),)  # found through KSampler.negative
    assert workflow.slots.seed == (("3", "seed"),)
    assert workflow.slots.size == ("5",)
    assert workflow.slots.output == ("9",)
    assert workflow.slots.lora is None
    result = inject(workflow, RenderParams(prompt="p", negative_prompt="n", width=64, height=36))
    assert result.graph["6"]["inputs"]["text"] == "p"
    assert result.graph["7"]["inputs"]["text"] == "n"
    assert (result.graph["5"]["inputs"]["width"], result.graph["5"]["inputs"]["height"]) == (
        64,
        48,
    )


def test_unmarked_flux_graph_falls_back_on_class_types() -> None:
    graph = flux_graph()
    for node in graph.values():
        node.pop("_meta")
    workflow = parse_workflow(graph, name="plain")
    assert workflow.slots == load_workflow(FLUX).slots


def test_markers_choose_between_several_candidates() -> None:
    graph = flux_graph()
    graph["30"] = copy.deepcopy(graph["4"])  # a second LoRA, e.g. a fixed detail LoRA
    graph["30"]["inputs"]["model"] = ["4", 0]
    graph["30"]["_meta"]["title"] = "Detail LoRA"
    graph["11"]["inputs"]["model"] = ["30", 0]
    workflow = parse_workflow(graph, name="two-loras")
    assert workflow.slots.lora == "4"
    result = inject(workflow, RenderParams(prompt="p", width=64, height=64))
    assert "4" not in result.graph
    assert result.graph["30"]["inputs"]["model"] == ["1", 0]

    graph["4"]["_meta"]["title"] = "Style LoRA"
    unmarked = parse_workflow(graph, name="two-loras")
    assert unmarked.slots.lora is None
    # Nothing to set: both LoRA nodes stay as they are.
    assert set(
        nodes_of(
            inject(unmarked, RenderParams(prompt="p", width=64, height=64)).graph,
            "LoraLoaderModelOnly",
        )
    ) == {"4", "30"}
    with pytest.raises(WorkflowFormatError, match=r"2 LoRA nodes.*storyboard:lora"):
        inject(unmarked, RenderParams(prompt="p", width=64, height=64, lora=LoraChoice("x")))


def test_not_json_is_refused_with_the_export_hint(tmp_path: Path) -> None:
    with pytest.raises(WorkflowFormatError, match=r"not JSON.*Workflow -> Export \(API\)"):
        load_workflow(write(tmp_path, "{'single': 'quotes'}"))


def test_ui_export_is_refused_with_the_export_hint(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(UI_EXPORT), "ui.json")
    with pytest.raises(WorkflowFormatError) as caught:
        load_workflow(path)
    message = str(caught.value)
    assert "ui.json" in message
    assert "UI-format" in message
    assert "Workflow -> Export (API)" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "JSON object of nodes"),
        ("{}", "no nodes"),
        ('{"1": {"inputs": {}}}', "node '1' is not an API-format node"),
        ('{"1": {"class_type": "X", "inputs": []}}', "node '1' is not an API-format node"),
    ],
)
def test_malformed_graphs_are_refused(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(WorkflowFormatError, match=message):
        load_workflow(write(tmp_path, content))


def test_missing_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkflowFormatError, match="does not exist"):
        load_workflow(tmp_path / "absent.json")
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"1": "\xff"}')
    with pytest.raises(WorkflowFormatError, match="cannot be read"):
        load_workflow(path)


def test_link_to_a_missing_node_is_refused() -> None:
    graph = flux_graph()
    graph["11"]["inputs"]["model"] = ["99", 0]
    with pytest.raises(WorkflowFormatError, match="node 11 input 'model' links to node '99'"):
        parse_workflow(graph, name="broken")


def test_missing_prompt_and_output_are_both_named() -> None:
    graph = flux_graph()
    graph["5"]["class_type"] = "SomeOtherEncoder"
    graph["5"]["_meta"]["title"] = "Prompt"
    del graph["18"]
    with pytest.raises(WorkflowFormatError) as caught:
        parse_workflow(graph, name="incomplete")
    message = str(caught.value)
    assert message.startswith(
        "the workflow is missing: prompt input (mark a node 'storyboard:prompt'"
    )
    assert "; output image (mark a node 'storyboard:output'" in message


@pytest.mark.parametrize(
    ("node", "marker", "message"),
    [
        (
            "5",
            "storyboard:promt",
            r"unknown marker 'storyboard:promt' \(did you mean 'storyboard:prompt'",
        ),
        ("13", "storyboard:seed", "has no literal int input named seed or noise_seed"),
        ("13", "storyboard:size", "marked 'storyboard:size' but has no integer"),
        ("13", "storyboard:lora", "only LoraLoader and LoraLoaderModelOnly"),
    ],
)
def test_bad_markers_are_refused(node: str, marker: str, message: str) -> None:
    graph = flux_graph()
    graph["4"]["_meta"]["title"] = "Style LoRA"
    graph[node]["_meta"]["title"] = f"node [{marker}]"
    with pytest.raises(WorkflowFormatError, match=message):
        parse_workflow(graph, name="marked")


def test_reference_chain_without_an_image_loader_is_refused() -> None:
    graph = flux_graph()
    graph["7"]["class_type"] = "EmptyImage"
    graph["7"]["inputs"] = {"width": 64, "height": 64, "batch_size": 1, "color": 0}
    graph["7"]["_meta"]["title"] = "Blank"
    with pytest.raises(WorkflowFormatError, match="exactly one LoadImage"):
        parse_workflow(graph, name="no-loader")


def test_several_unmarked_reference_nodes_refuse_references_only() -> None:
    graph = flux_graph()
    for node in graph.values():
        node.pop("_meta")
    for old in ("7", "8", "9", "10"):
        clone = copy.deepcopy(graph[old])
        for name, value in clone["inputs"].items():
            if isinstance(value, list) and value[0] in ("7", "8", "9", "10"):
                clone["inputs"][name] = ["2" + value[0], value[1]]
        graph["2" + old] = clone
    graph["210"]["inputs"]["conditioning"] = ["10", 0]
    graph["11"]["inputs"]["conditioning"] = ["210", 0]
    workflow = parse_workflow(graph, name="two-refs")
    assert workflow.slots.reference is None
    assert inject(workflow, RenderParams(prompt="p", width=64, height=64)).graph
    with pytest.raises(WorkflowFormatError, match=r"2 reference nodes.*storyboard:reference"):
        inject(workflow, RenderParams(prompt="p", width=64, height=64, references=["a.png"]))


def test_loading_copies_the_input() -> None:
    graph = flux_graph()
    workflow = parse_workflow(graph, name="copy")
    graph["5"]["inputs"]["text"] = "changed afterwards"
    assert workflow.graph["5"]["inputs"]["text"] == ""
