"""The FastAPI app: the browser page at `/` and the Realtime WebSocket at `/v1/realtime`, over one engine.

The app owns the engine's real-time thread (started with the app, stopped with it); every connection opens
one engine session. `serve_in_thread` runs the app with uvicorn on a background thread: tests, the load test
and `microturn serve` all use it, so they serve exactly the same way.
"""

from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from microturn.runtime.engine import Engine
from microturn.server.protocol import IdMaker, ProtocolError, error_payload
from microturn.server.realtime import RealtimeConnection
from microturn.server.security import AccessPolicy, Limits

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MODEL_NAME = "microturn"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # resolved by security.resolve_api_key before it gets here
    allowed_origins: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    policy = AccessPolicy(config.host, config.api_key, config.allowed_origins)
    ids = IdMaker()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="microturn", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket, model: str = DEFAULT_MODEL_NAME) -> None:
        admission = policy.admit(websocket.headers, list(websocket.scope.get("subprotocols", [])))
        if not admission.allowed:
            await websocket.close(code=1008, reason=admission.reason)  # before accept: HTTP 403
            return
        await websocket.accept(subprotocol=admission.subprotocol)
        beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
        connection = RealtimeConnection(websocket, engine, config.limits, ids, model[:200], beta=beta)
        try:
            await connection.run()
        except RuntimeError as exc:  # the engine is full
            if "full" not in str(exc):
                raise
            error = error_payload(ProtocolError("server_busy", str(exc)))
            await websocket.send_json({"type": "error", "event_id": ids("event"), "error": error})
            await websocket.close(code=1013)

    return app


@dataclass
class RunningServer:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: FastAPI, host: str, port: int, max_event_bytes: int) -> RunningServer:
    """Start uvicorn on a daemon thread; returns once it listens, with the bound port (port 0: any free)."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            # Messages a little over the event limit still arrive and get an `error` event; far over, the
            # socket closes (1009) before they are buffered.
            ws_max_size=max_event_bytes + (1 << 20),
        )
    )
    thread = threading.Thread(target=server.run, name="microturn-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port} (port in use?)")
        time.sleep(0.02)
    return RunningServer(server, thread, server.servers[0].sockets[0].getsockname()[1])
