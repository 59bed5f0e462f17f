"""`microturn serve`: the Realtime server and the browser page, over one engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from microturn.runtime.cli import add_voice_argument


def load_engine(checkpoint: str | Path | None, config, int8: bool = False):
    """An engine (not started) over a runtime checkpoint (None: the one shipped in the package)."""
    from microturn.runtime.checkpoint import load_runtime
    from microturn.runtime.engine import Engine

    models = load_runtime(checkpoint, int8=int8)
    return Engine(config, models.model, models.tokenizer, models.vocoder)


def serve(args: argparse.Namespace) -> int:
    import torch

    from microturn.background.backends import EmbeddedBackend, backend_from_spec
    from microturn.runtime.engine import EngineConfig
    from microturn.server.app import ServerConfig, create_app, serve_in_thread
    from microturn.server.security import Limits, resolve_api_key

    api_key = resolve_api_key(args.host, args.api_key)  # refuses a non-loopback host without a key
    torch.set_num_threads(args.threads)
    engine = load_engine(
        args.checkpoint,
        EngineConfig(max_sessions=args.max_sessions, threads=args.threads, voice=args.voice),
        int8=args.int8,
    )
    if engine.word_voice is not None:  # the common words' units, before a client waits on them
        engine.word_voice.prefetch()
    config = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=api_key,
        allowed_origins=tuple(args.allow_origin),
        limits=Limits(max_session_s=args.max_session_s),
    )
    background = backend_from_spec(args.background)
    if isinstance(background, EmbeddedBackend):
        background.load()  # once, before any client waits on it
    app = create_app(engine, config)
    app.state.background_backend = background  # each connection runs a background worker on it
    running = serve_in_thread(app, args.host, args.port, config.limits.max_event_bytes)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"microturn: open http://{shown_host}:{running.port}/ in a browser", flush=True)
    try:
        while running.thread.is_alive():
            running.thread.join(0.5)
    except KeyboardInterrupt:
        print("microturn: stopping", flush=True)
    finally:
        running.stop()
        if engine.word_voice is not None:
            engine.word_voice.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the Realtime protocol and the browser client", description=__doc__
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other address needs an API key)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="model checkpoint folder (default: the one shipped in the package)",
    )
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the Linear layers")
    add_voice_argument(p)
    p.add_argument("--api-key", default=None, help="required bearer key (default: $MICROTURN_API_KEY)")
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin besides the page's own allowed to connect (repeatable)",
    )
    p.add_argument("--max-sessions", type=int, default=64, help="concurrent sessions the engine accepts")
    p.add_argument("--max-session-s", type=float, default=3600.0, help="longest session in seconds")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    p.add_argument(
        "--background",
        default="off",
        metavar="embedded|off|URL",
        help="background model: embedded SmolLM2, off (default), or an OpenAI-compatible base URL[#model]",
    )
    p.set_defaults(func=serve)
