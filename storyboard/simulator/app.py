"""HTTP and WebSocket routes of the simulated ComfyUI server, each also under /api.

In front of them: the header gate (`gate`), then the canned answers of `faults`.
"""

from __future__ import annotations

import json
import mimetypes
import platform
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from storyboard.simulator.files import UnsafePathError
from storyboard.simulator.gate import HeaderGate
from storyboard.simulator.host import ServerHost
from storyboard.simulator.hub import SERVER_FEATURES
from storyboard.simulator.render import preview
from storyboard.simulator.streams import endless_json_response, trickle_response
from storyboard.simulator.submission import Rejected, check_submission


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


class _CannedAnswers:
    """Serves the answers queued with `faults.answer_next` in place of the real route."""

    def __init__(self, app: ASGIApp, sim: ServerHost) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            canned = self.sim.faults.take_answer(scope["path"])
            if canned is not None:
                response = Response(
                    canned.body, status_code=canned.status, media_type=canned.content_type
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(sim: ServerHost) -> Starlette:
    async def post_prompt(request: Request) -> Response:
        body = await _json_body(request)
        try:
            accepted = check_submission(body, sim.object_info())
        except Rejected as rejected:
            return JSONResponse(rejected.body, status_code=400)
        return JSONResponse(await sim.enqueue(accepted))

    async def get_prompt(request: Request) -> Response:
        return JSONResponse({"exec_info": {"queue_remaining": sim.queue_remaining()}})

    async def history(request: Request) -> Response:
        if sim.faults.take_endless():
            return endless_json_response()
        return JSONResponse(sim.history(request.path_params["prompt_id"]))

    async def all_history(request: Request) -> Response:
        raw = request.query_params.get("max_items", "")
        return JSONResponse(sim.all_history(int(raw) if raw.isdigit() else None))

    async def view(request: Request) -> Response:
        query = request.query_params
        try:
            path = sim.files.locate(
                query.get("type", "output"), query.get("subfolder", ""), query.get("filename", "")
            )
        except UnsafePathError:
            return Response(status_code=400)
        if not path.is_file():
            return Response(status_code=404)
        if "preview" in query:
            data, kind = await run_in_threadpool(
                preview, path.read_bytes(), query["preview"], query.get("channel", "")
            )
            return Response(data, media_type=kind)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        byte_every_s = sim.faults.take_trickle()
        if byte_every_s is not None:
            return trickle_response(path, media, byte_every_s)
        return FileResponse(path, media_type=media)

    async def upload_image(request: Request) -> Response:
        async with request.form() as form:
            image = form.get("image")
            if not isinstance(image, UploadFile) or not image.filename:
                return Response(status_code=400)
            subfolder = str(form.get("subfolder", ""))
            folder_type = str(form.get("type", "input")) or "input"
            overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
            data = await image.read()
            try:
                name = sim.files.upload(data, image.filename, subfolder, overwrite=overwrite)
            except UnsafePathError:
                return Response(status_code=400)
        return JSONResponse({"name": name, "subfolder": subfolder, "type": folder_type})

    async def queue(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(sim.queue())
        body = await _json_body(request)
        if isinstance(body, dict):
            if body.get("clear"):
                await sim.delete_pending(None)
            if isinstance(body.get("delete"), list):
                await sim.delete_pending([str(i) for i in body["delete"]])
        return Response(status_code=200)

    async def interrupt(request: Request) -> Response:
        body = await _json_body(request)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        sim.interrupt(str(prompt_id) if prompt_id else None)
        return Response(status_code=200)

    async def object_info(request: Request) -> Response:
        info = sim.object_info()
        name = request.path_params.get("node_class")
        if name is None:
            return JSONResponse(info)
        return JSONResponse({name: info[name]} if name in info else {})

    async def models(request: Request) -> Response:
        return JSONResponse(sorted(sim.config.models))

    async def model_folder(request: Request) -> Response:
        names = sim.config.models.get(request.path_params["folder"])
        return JSONResponse(sorted(names)) if names is not None else Response(status_code=404)

    async def system_stats(request: Request) -> Response:
        return JSONResponse({
            "system": {"os": platform.system().lower(), "python_version": platform.python_version(),
                       "comfyui_version": "storyboard-simulator", "embedded_python": False},
            "devices": [{"name": "simulated", "type": "cpu", "index": 0}],
        })  # fmt: skip

    async def job(request: Request) -> Response:
        found = sim.job(request.path_params["prompt_id"])
        if found is None:
            return JSONResponse({"error": "Job not found"}, status_code=404)
        return JSONResponse(found)

    async def cancel_job(request: Request) -> Response:
        return JSONResponse({"cancelled": await sim.cancel(request.path_params["prompt_id"])})

    async def websocket(socket: WebSocket) -> None:
        client_id = socket.query_params.get("clientId") or uuid.uuid4().hex
        await socket.accept()
        sim.hub.add(client_id, socket)
        try:
            await socket.send_json({"type": "status", "data": {
                "status": {"exec_info": {"queue_remaining": sim.queue_remaining()}},
                "sid": client_id}})  # fmt: skip
            first = True
            while True:
                text = await socket.receive_text()
                message = _json_or_none(text)
                # As in ComfyUI: feature flags count only as a socket's first message.
                if first and isinstance(message, dict) and message.get("type") == "feature_flags":
                    flags = message.get("data")
                    sim.hub.declare(client_id, socket, flags if isinstance(flags, dict) else {})
                    await socket.send_json({"type": "feature_flags", "data": SERVER_FEATURES})
                first = False
        except (WebSocketDisconnect, RuntimeError, KeyError):
            pass
        finally:
            sim.hub.remove(client_id, socket)

    async def features(request: Request) -> Response:
        return JSONResponse(SERVER_FEATURES)

    routes: list[BaseRoute] = []
    for prefix in ("", "/api"):
        routes += [
            Route(f"{prefix}/prompt", post_prompt, methods=["POST"]),
            Route(f"{prefix}/prompt", get_prompt, methods=["GET"]),
            Route(f"{prefix}/history", all_history, methods=["GET"]),
            Route(f"{prefix}/history/{{prompt_id}}", history, methods=["GET"]),
            Route(f"{prefix}/view", view, methods=["GET"]),
            Route(f"{prefix}/upload/image", upload_image, methods=["POST"]),
            Route(f"{prefix}/queue", queue, methods=["GET", "POST"]),
            Route(f"{prefix}/interrupt", interrupt, methods=["POST"]),
            Route(f"{prefix}/object_info", object_info, methods=["GET"]),
            Route(f"{prefix}/object_info/{{node_class}}", object_info, methods=["GET"]),
            Route(f"{prefix}/models", models, methods=["GET"]),
            Route(f"{prefix}/models/{{folder}}", model_folder, methods=["GET"]),
            Route(f"{prefix}/system_stats", system_stats, methods=["GET"]),
            Route(f"{prefix}/features", features, methods=["GET"]),
            WebSocketRoute(f"{prefix}/ws", websocket),
        ]
    routes += [
        Route("/api/jobs/{prompt_id}", job, methods=["GET"]),
        Route("/api/jobs/{prompt_id}/cancel", cancel_job, methods=["POST"]),
    ]
    # The gate stands outermost: a proxy answers before the server (or a canned answer) does.
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(HeaderGate, config=sim.config, seen=sim.seen_headers),
            Middleware(_CannedAnswers, sim=sim),
        ],
    )
