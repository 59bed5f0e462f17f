"""The browser client in headless Chromium: a spoken wav as the fake microphone goes up through the
AudioWorklet, the model's audio comes back and plays, and the timeline shows who spoke when."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from test_server_realtime import build_checkpoint, live_sessions, start_server, steer

from microturn.runtime.engine import EngineConfig
from microturn.server.app import ServerConfig
from microturn.server.cli import load_engine

CHROMIUM = shutil.which("chromium")
# headless Chromium on a machine with no GPU, no network and nobody to click "allow"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
MODEL_COLOUR = (230, 85, 13)  # #e6550d, the model's bars in the timeline (style.css / app.js)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("espeak-ng") is None,
    reason="needs Debian chromium and espeak-ng (make setup installs them)",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    engine = load_engine(
        build_checkpoint(tmp_path_factory.mktemp("browser_ckpt")), EngineConfig(max_sessions=4)
    )
    steer(engine)
    running = start_server(engine, ServerConfig(port=0))
    yield engine, running.port
    running.stop()


def count_model_pixels(page) -> int:
    return page.evaluate(
        """([r, g, b]) => {
            const c = document.getElementById('timeline');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] === r && d[i + 1] === g && d[i + 2] === b) n++;
            return n;
        }""",
        list(MODEL_COLOUR),
    )


def test_page_streams_the_microphone_and_plays_the_model(served, tmp_path):
    from playwright.sync_api import sync_playwright

    engine, port = served
    wav = tmp_path / "mic.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(wav), "hello there, how are you doing today? tell me about the weather."],
        check=True,
        capture_output=True,
    )
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        *BROWSER_ARGS,
    ]
    with sync_playwright() as playwright:
        # launch_persistent_context passes a fresh --user-data-dir (the profile folder below).
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=args
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.click("#start")
            # 200 ms PCM16 frames from the worklet reach the model's session.
            page.wait_for_function("window.microturn.stats.sent >= 5", timeout=15_000)
            (session,) = live_sessions(engine)
            assert session.audio.received >= 4 * 3200  # 16 kHz samples: at least 0.8 s of microphone
            assert page.evaluate("window.microturn.segments.mic.length") > 0  # the spoken wav was heard

            page.click("#speak")  # response.create: the model speaks now
            page.wait_for_function("window.microturn.stats.audioDeltas > 0", timeout=10_000)
            page.wait_for_function("window.microturn.stats.samplesPlayed > 0", timeout=10_000)
            stats = page.evaluate("window.microturn.stats")
            assert stats["samplesReceived"] == 4800 * stats["audioDeltas"]
            assert stats["events"]["response.created"] >= 1
            page.wait_for_function("window.microturn.stats.events['response.done'] >= 1", timeout=10_000)
            assert count_model_pixels(page) > 0  # the model's bar is on the timeline

            page.fill("#text", "what is the weather like")
            page.click("#send")
            page.wait_for_function(
                "window.microturn.stats.events['conversation.item.done'] >= 2", timeout=10_000
            )
            assert "what is the weather like" in page.inner_text("#transcript")

            # The model perceives the user talking and yields mid-utterance: playback stops at once.
            steer(engine, floor="user")
            page.click("#speak")
            page.wait_for_function(
                "(window.microturn.stats.events['conversation.item.truncated'] || 0) >= 1", timeout=10_000
            )
            assert page.evaluate("window.microturn.playing.length") == 0
            page.wait_for_selector(".turn.model.cut", timeout=10_000)
            assert page.evaluate("window.microturn.floor") in ("yielding", "listening")
            assert errors == []
        finally:
            context.close()
