"""Rendering one sentence, as plain steps with no orchestrator in them.

    resolve         -> what to draw: prompt, seed, reference files, LoRA (from the store)
    prepare         -> read references, inject into the workflow, validate, then upload (no GPU)
    claim           -> record the attempt (image job), sentence `generating`; a sentence
                       without a seed keeps the one this attempt drew
    render          -> run on ComfyUI, download, check the bytes decode at the asked size (GPU)
    write_picture   -> finish to the exact frame (a graph that crops on the server returns it:
                       only the text chunks are added), write atomically; then its thumbnail
                       from the server's JPEG preview (storyboard.thumbnails), best effort
    record_pictures -> compare-and-set the sentences of written pictures, in one store call

References are uploaded only once the graph is known to use them (injected and validated
with the content names the upload gives them) and never with `prepare(upload=False)` (a dry
run). The stored picture carries the graph that was queued under ComfyUI's `prompt` key and
our provenance under `storyboard:` keys (picture_info).

The split is what lets an orchestrator keep the GPU busy: `prepare` of the next sentence and
`write_picture` of the previous one run while the current one renders, so between two renders
there is only the claim and the submission. Failures are recorded with `record_failure`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storyboard import ids, picture_info, thumbnails
from storyboard.atomic import write_stamped
from storyboard.comfyui import OutputImage
from storyboard.comfyui.uploads import content_name
from storyboard.errors import ImageDecodeError, StoryboardError
from storyboard.image import finish_image, read_text, verify_image
from storyboard.lane import EventCallback, LaneSession
from storyboard.references import read_reference, reference_hash
from storyboard.render_cache import picture_of
from storyboard.seeds import random_seed
from storyboard.settings import Settings
from storyboard.store import Claimed, Completion, Store
from storyboard.store.models import Character, ImageJob, Project, RenderInputs, Sentence
from storyboard.workflow import (
    Injected,
    LoraChoice,
    RenderParams,
    Workflow,
    crop_class_for,
    graph_for_job,
    inject,
    render_size,
    validate_graph_against,
)

log = logging.getLogger(__name__)

ERROR_TEXT_LIMIT = 2000
# The folder LaneSession.upload puts reference images in on the server (the client's default).
UPLOAD_SUBFOLDER = "storyboard"


@dataclass(frozen=True)
class PipelineConfig:
    """The numbers and paths the steps need, taken from the settings once per run."""

    data_dir: Path
    workflow_path: Path
    frame: tuple[int, int]
    image_timeout_s: float
    max_download_bytes: int
    max_image_pixels: int
    max_reference_bytes: int
    # None: the workflow's own sampler steps / reference scale.
    steps: int | None = None
    reference_megapixels: float | None = None
    # Drafts: written to `images/drafts/`, recorded as the sentence's draft, never its picture.
    draft: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, draft: bool = False) -> PipelineConfig:
        """The run's config; with `draft`, a draft pass's (the draft steps and reference
        scale: same frame, same seed)."""
        return cls(
            data_dir=settings.data_dir,
            workflow_path=settings.workflow,
            frame=settings.frame_size,
            image_timeout_s=settings.image_timeout_s,
            max_download_bytes=settings.max_download_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_reference_bytes=settings.max_reference_bytes,
            steps=settings.draft_steps if draft else settings.steps,
            reference_megapixels=(
                settings.draft_reference_megapixels if draft else settings.reference_megapixels
            ),
            draft=draft,
        )


@dataclass(frozen=True)
class Resolved:
    """What one sentence's picture is made from, at one revision of the sentence."""

    project_id: str
    sentence_id: str
    revision: int
    prompt: str
    negative_prompt: str | None
    seed: int | None
    references: tuple[str, ...]  # paths relative to data/projects/{project}/
    lora: LoraChoice | None


@dataclass(frozen=True)
class Prepared:
    """A validated graph, ready to queue."""

    resolved: Resolved
    graph: dict[str, Any]
    seed: int
    graph_hash: str
    workflow_name: str
    reference_hashes: tuple[str, ...]
    # What ComfyUI returns: the frame when the graph crops on the server (then storing only
    # adds text chunks), else the render size; None: the render size of the config's frame.
    output_size: tuple[int, int] | None = None
    # The graph's SaveImage nodes: the picture is theirs, not another node's output.
    output_nodes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.resolved.project_id}/{self.resolved.sentence_id}"


@dataclass(frozen=True)
class Rendered:
    """The verified bytes ComfyUI produced for a prepared graph, under one image job."""

    prepared: Prepared
    job: ImageJob
    prompt_id: str | None  # None: reused from the render cache, ComfyUI was not asked
    data: bytes
    render_s: float  # the prompt's own execution; a cache hit: the time to find it
    # The graph ComfyUI ran (what `graph_for_job` queued, or what a cached picture records);
    # None: the prepared graph.
    executed_graph: dict[str, Any] | None = None
    queue_s: float | None = None  # waiting in ComfyUI's queue; None when not queued
    output: OutputImage | None = None  # the file on ComfyUI; None: not made by ComfyUI now

    @property
    def cached(self) -> bool:
        return self.prompt_id is None


@dataclass(frozen=True)
class Stored:
    image_path: Path
    image_file: str  # relative to the project's directory, as recorded in the store
    current: bool  # False: the sentence was edited meanwhile and stays dirty
    seed: int
    seconds: float  # the whole attempt: render, download and storing
    cached: bool = False
    render_s: float = 0.0  # the prompt's own execution on ComfyUI
    queue_s: float | None = None  # its wait in ComfyUI's queue


# -- resolve -----------------------------------------------------------------------------------


def resolve(
    store: Store,
    project_id: str,
    sentence_id: str,
    *,
    reference_paths: Sequence[str] | None = None,
    inputs: RenderInputs | None = None,
) -> Resolved:
    """Prompt, seed, references and LoRA of a sentence as stored now, or as `inputs` read
    it earlier (a batch reads them all at once; its claim catches an edit since, see
    `is_current`).

    LoRA: the sentence's own, else the first of its characters' (in the sentence's order),
    else the project's. References: `reference_paths` when given, else every reference
    image of the sentence's characters, in order, without duplicates.
    """
    if inputs is None:
        inputs = store.render_inputs(project_id, sentence_id)
    elif (inputs.sentence.project_id, inputs.sentence.id) != (project_id, sentence_id):
        raise ValueError(f"render inputs of {inputs.sentence.id!r} given for {sentence_id!r}")
    sentence, project, characters = inputs.sentence, inputs.project, inputs.characters
    if reference_paths is None:
        references = _dedupe(path for c in characters for path in c.reference_images)
    else:
        references = _dedupe(reference_paths)
    return Resolved(
        project_id=project_id,
        sentence_id=sentence_id,
        revision=sentence.image_revision,
        prompt=sentence.image_prompt,
        negative_prompt=sentence.negative_prompt,
        seed=sentence.seed,
        references=references,
        lora=choose_lora(sentence, characters, project),
    )


def choose_lora(
    sentence: Sentence, characters: Sequence[Character], project: Project
) -> LoraChoice | None:
    if sentence.lora_name:
        return LoraChoice(sentence.lora_name, _strength(sentence.lora_strength, project))
    by_id = {c.id: c for c in characters}
    for character_id in sentence.character_ids:
        character = by_id.get(character_id)
        if character is not None and character.lora_name:
            return LoraChoice(character.lora_name, _strength(character.lora_strength, project))
    if project.lora_name:
        return LoraChoice(project.lora_name, project.lora_strength)
    return None


def _strength(own: float | None, project: Project) -> float:
    return own if own is not None else project.lora_strength


def _dedupe(paths: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(p) for p in paths))


# -- prepare -----------------------------------------------------------------------------------


def prepare(
    session: LaneSession,
    workflow: Workflow,
    resolved: Resolved,
    config: PipelineConfig,
    *,
    upload: bool = True,
) -> Prepared:
    """Read the references, inject, validate against the server, then upload. No GPU work.

    The graph is built and validated first with the names the upload will give the
    references (content-addressed), so a graph that cannot use them uploads nothing; with
    `upload=False` (a dry run) nothing is sent at all.
    """
    project_root = ids.project_dir(config.data_dir, resolved.project_id)
    references = [
        read_reference(
            path,
            project_root=project_root,
            max_bytes=config.max_reference_bytes,
            max_pixels=config.max_image_pixels,
            data_dir=config.data_dir.resolve(),
        )
        for path in resolved.references
    ]
    names = [
        f"{UPLOAD_SUBFOLDER}/{content_name(data, what=f'reference image {path!r}')}"
        for path, data in zip(resolved.references, references, strict=True)
    ]
    seed = resolved.seed if resolved.seed is not None else random_seed()
    injected = _injected(session, workflow, resolved, config, seed, names)
    if upload and references:
        uploaded = [
            session.upload(data, filename_hint=Path(path).name)
            for path, data in zip(resolved.references, references, strict=True)
        ]
        if uploaded != names:  # the server chose other names: the graph must use those
            injected = _injected(session, workflow, resolved, config, seed, uploaded)
    return Prepared(
        resolved=resolved,
        graph=injected.graph,
        seed=injected.seed,
        graph_hash=injected.graph_hash,
        workflow_name=injected.workflow_name,
        reference_hashes=tuple(reference_hash(data) for data in references),
        output_size=injected.output_size,
        output_nodes=injected.output_nodes,
    )


def _injected(
    session: LaneSession,
    workflow: Workflow,
    resolved: Resolved,
    config: PipelineConfig,
    seed: int,
    names: Sequence[str],
) -> Injected:
    width, height = config.frame
    params = RenderParams(
        prompt=resolved.prompt,
        width=width,
        height=height,
        negative_prompt=resolved.negative_prompt,
        seed=seed,
        lora=resolved.lora,
        references=names,
        steps=config.steps,
        reference_megapixels=config.reference_megapixels,
        crop_class=crop_class_for(session.object_info()),
    )
    injected = inject(workflow, params)
    validate_graph_against(injected.graph, with_uploaded_images(session.object_info(), names))
    return injected


def with_uploaded_images(object_info: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """`object_info` whose LoadImage choices also list files uploaded after it was fetched.

    ComfyUI lists the input folder in /object_info; we fetch it once per batch, so our own
    uploads since then are not in it although the server has them.
    """
    info = dict(object_info)
    node = object_info.get("LoadImage")
    if not names or not isinstance(node, dict):
        return info
    node = copy.deepcopy(node)
    spec = node.get("input", {}).get("required", {}).get("image")
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            spec[0] = [*spec[0], *(n for n in names if n not in spec[0])]
        elif spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            options = list(spec[1].get("options") or [])
            spec[1]["options"] = [*options, *(n for n in names if n not in options)]
    info["LoadImage"] = node
    return info


# -- claim / render ----------------------------------------------------------------------------


def is_current(prepared: Prepared, job: ImageJob) -> bool:
    """False when the sentence was edited between preparing and claiming, or another run
    stored its seed on it first (see `claim`): prepare again."""
    return job.revision == prepared.resolved.revision and job.seed in (None, prepared.seed)


def claim(
    store: Store,
    prepared: Prepared,
    *,
    run_id: str,
    attempt: int,
    stale_after_s: float,
    only_dirty: bool = True,
    reuse: bool = True,
    draft: bool = False,
    lane: str | None = None,
) -> Claimed | None:
    """Record this attempt; None when another live run is rendering the sentence, or (with
    `only_dirty`) when another run has already made its image since this batch listed it.

    A sentence without a seed keeps the one drawn for this attempt, so its later renders
    (after a prompt edit, say) keep the composition; a dry run never claims, so it stores none.
    With `reuse`, the same store call looks up a picture already made from this graph.
    With `draft`, the attempt makes the sentence's draft (`Store.start_job`); `lane` is
    the GPU lane it runs on.
    """
    resolved = prepared.resolved
    return store.start_render(
        resolved.project_id,
        resolved.sentence_id,
        run_id=run_id,
        attempt=attempt,
        stale_after_s=stale_after_s,
        only_dirty=only_dirty,
        seed=prepared.seed,
        graph_hash=prepared.graph_hash if reuse else None,
        draft=draft,
        lane=lane,
    )


def render(
    session: LaneSession,
    store: Store,
    prepared: Prepared,
    claimed: Claimed,
    config: PipelineConfig,
    *,
    on_event: EventCallback | None = None,
    wait: Callable[[Any], Any] | None = None,
) -> Rendered:
    """Run the graph on ComfyUI and return its first image, verified to decode.

    When claimed with `reuse`, a picture already made from the same graph hash is taken from
    disk instead (see render_cache); ComfyUI is not asked. The claim has looked it up, unless
    the graph changed since (prepared again after an edit): then the store is asked here.

    `wait(future)` lets the caller do its own work (progress reports) while the render runs;
    it must return the future's result. The job learns the ComfyUI prompt id when the
    picture is recorded (`record_pictures`), so no store access sits between two renders.
    Each attempt is its own job, and `graph_for_job` keys the output file on the job.
    """
    started = time.monotonic()
    job = claimed.job
    if claimed.graph_hash is not None:  # claimed with `reuse`
        graph_hash = prepared.graph_hash
        looked_up = claimed.graph_hash == graph_hash
        made_before = (
            claimed.made_before if looked_up else store.find_render(graph_hash, draft=config.draft)
        )
        picture = picture_of(
            made_before, graph_hash, config.data_dir, max_bytes=config.max_download_bytes
        )
        if picture is not None:
            made_by = picture_info.executed_graph(read_text(picture))
            return Rendered(prepared, job, None, picture, time.monotonic() - started, made_by)
    graph = graph_for_job(prepared.graph, job.id)
    future = session.start_run(graph, timeout_s=config.image_timeout_s, on_event=on_event)
    result = wait(future) if wait is not None else future.result()
    try:
        output = result.image_of(prepared.output_nodes)
        if output is None:
            nodes = ", ".join(prepared.output_nodes)
            raise ImageDecodeError(
                f"ComfyUI returned no image for {prepared.label}"
                + (f" from its SaveImage node(s) {nodes}" if nodes else "")
            )
        data = session.download(output, max_bytes=config.max_download_bytes)
        # While the lane is held, only what a retry of the render can fix (truncated, corrupt
        # or wrongly sized output) is checked; full decoding happens when storing, off the
        # GPU path.
        verify_image(
            data,
            max_pixels=config.max_image_pixels,
            size=prepared.output_size or render_size(*config.frame),
            what="ComfyUI output",
        )
    except StoryboardError as exc:
        if exc.render_s is None:  # the render ran: its attempt cost that GPU time
            exc.render_s = result.render_s
        raise
    return Rendered(
        prepared=prepared,
        job=job,
        prompt_id=result.prompt_id,
        data=data,
        render_s=result.render_s,
        executed_graph=graph,
        queue_s=result.queue_s,
        output=output,
    )


# -- store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """A finished picture on disk whose job is not recorded yet (`record_pictures`): what
    recording needs, without the image bytes."""

    job: ImageJob
    prepared: Prepared
    image_path: Path
    image_file: str
    seconds: float  # the whole attempt up to the write
    cached: bool
    render_s: float
    queue_s: float | None
    prompt_id: str | None

    def completion(self) -> Completion:
        return Completion(
            self.job.id,
            image_file=self.image_file,
            seed=self.prepared.seed,
            workflow_hash=self.prepared.graph_hash,
            duration_s=self.seconds,
            render_s=self.render_s,
            queue_s=self.queue_s,
            prompt_id=self.prompt_id,
        )

    def stored(self, current: bool) -> Stored:
        return Stored(
            image_path=self.image_path,
            image_file=self.image_file,
            current=current,
            seed=self.prepared.seed,
            seconds=self.seconds,
            cached=self.cached,
            render_s=self.render_s,
            queue_s=self.queue_s,
        )


def write_picture(
    store: Store,
    rendered: Rendered,
    config: PipelineConfig,
    session: LaneSession | None = None,
) -> Written:
    """Finish to the frame and write atomically; the job is recorded by `record_pictures`.
    With the `session` it was rendered on, the picture's thumbnail is made too.

    A write that fails still has the job name its ComfyUI prompt (recording would have).
    """
    started = time.monotonic()
    try:
        path, image_file, picture_stamp = _write_picture(rendered, config)
    except Exception:
        if rendered.prompt_id is not None:
            with contextlib.suppress(StoryboardError):
                store.set_job_prompt(rendered.job.id, rendered.prompt_id)
        raise
    # A thumbnail is the final picture's stand-in (the sheet, the artifact): none of a draft.
    if session is not None and rendered.output is not None and not config.draft:
        write_thumbnail(session, rendered.prepared, rendered.output, config, picture_stamp)
    return Written(
        job=rendered.job,
        prepared=rendered.prepared,
        image_path=path,
        image_file=image_file,
        seconds=rendered.render_s + (rendered.queue_s or 0.0) + (time.monotonic() - started),
        cached=rendered.cached,
        render_s=rendered.render_s,
        queue_s=rendered.queue_s,
        prompt_id=rendered.prompt_id,
    )


def record_pictures(store: Store, written: Sequence[Written]) -> list[Stored]:
    """Compare-and-set the sentences of pictures already written, in one store call (one
    transaction: a store error records none of them)."""
    current = store.complete_jobs([picture.completion() for picture in written])
    return [picture.stored(won) for picture, won in zip(written, current, strict=True)]


def write_thumbnail(
    session: LaneSession,
    prepared: Prepared,
    output: OutputImage,
    config: PipelineConfig,
    picture_stamp: str,
) -> bool:
    """Fetch ComfyUI's JPEG preview of `output` and write the thumbnail of the picture stamped
    `picture_stamp` from it. Never fails the picture: False (and no thumbnail, so the sheet
    decodes the picture) when the server or the disk cannot give one."""
    resolved = prepared.resolved
    try:
        preview = session.download(
            output, max_bytes=config.max_download_bytes, preview=thumbnails.PREVIEW
        )
        thumbnails.write_thumbnail(
            config.data_dir,
            resolved.project_id,
            resolved.sentence_id,
            preview,
            picture_stamp=picture_stamp,
            frame=config.frame,
            max_pixels=config.max_image_pixels,
        )
    except (StoryboardError, OSError, concurrent.futures.CancelledError) as exc:
        log.info(
            "%s: no thumbnail (%s); the contact sheet decodes the picture", prepared.label, exc
        )
        return False
    return True


def _write_picture(rendered: Rendered, config: PipelineConfig) -> tuple[Path, str, str]:
    """The finished PNG written atomically; its path, its name relative to the project and
    its stamp."""
    prepared = rendered.prepared
    resolved = prepared.resolved
    lora = resolved.lora
    png = finish_image(
        rendered.data,
        frame=config.frame,
        plain_text=picture_info.comfyui_text(rendered.executed_graph or prepared.graph),
        metadata=picture_info.provenance(
            project_id=resolved.project_id,
            sentence_id=resolved.sentence_id,
            revision=resolved.revision,
            prompt=resolved.prompt,
            seed=prepared.seed,
            workflow_name=prepared.workflow_name,
            workflow_hash=prepared.graph_hash,
            lora=None if lora is None else (lora.name, lora.strength),
            reference_hashes=prepared.reference_hashes,
        ),
        max_pixels=config.max_image_pixels,
    )
    parts: tuple[str, ...] = (
        ids.draft_parts(resolved.project_id, resolved.sentence_id)
        if config.draft
        else ids.image_parts(resolved.project_id, resolved.sentence_id)
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # Never through a link: one at the final name is replaced, one among the folders refused.
    picture_stamp = write_stamped(config.data_dir, parts, png)
    path = config.data_dir.resolve().joinpath(*parts)
    # The store keeps paths relative to the project's directory: `images/{sentence}.png`, or
    # `images/drafts/{sentence}.png` for a draft.
    image_file = "/".join(parts[2:])
    return path, image_file, picture_stamp


# -- failures ----------------------------------------------------------------------------------


def error_text(exc: BaseException) -> str:
    """One line for the store and the summary: the error's type and message, bounded."""
    kind = type(exc).__name__
    message = str(exc) or kind
    text = message if isinstance(exc, StoryboardError) else f"{kind}: {message}"
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."


def record_failure(
    store: Store,
    project_id: str,
    sentence_id: str,
    exc: BaseException,
    *,
    job: ImageJob | None,
    final: bool,
    run_id: str,
    attempt: int,
    stale_after_s: float,
    seed: int | None = None,
    draft: bool = False,
    lane: str | None = None,
) -> bool:
    """Close the attempt as failed. A failure before any claim (bad reference, missing LoRA)
    is recorded as a failed job of its own, so the sentence shows the error. Returns False
    when another run holds the sentence (then nothing is recorded).

    The job keeps the seed and the ComfyUI prompt id the error names (`prompt_id` of a
    ComfyUIError), so the failure can be looked up on the server and reproduced."""
    if job is None:
        job = store.start_job(
            project_id,
            sentence_id,
            run_id=run_id,
            attempt=attempt,
            stale_after_s=stale_after_s,
            draft=draft,
            lane=lane,
        )
        if job is None:
            return False
    prompt_id = getattr(exc, "prompt_id", None)
    store.fail_job(
        job.id,
        error_text(exc),
        final=final,
        prompt_id=prompt_id if isinstance(prompt_id, str) else None,
        seed=seed,
        render_s=exc.render_s if isinstance(exc, StoryboardError) else None,
    )
    return True
