// The microturn browser client: Realtime protocol over a WebSocket, plus the duplex extension
// (docs/protocol.md). Microphone -> AudioWorklet (24 kHz PCM16, 200 ms frames) -> input_audio_buffer.append;
// camera -> centre crop at the model's frame size -> JPEG -> microturn.video.frame, one per micro-turn;
// model audio -> scheduled AudioBuffers, stopped at once when the model yields; a scrolling timeline of who
// speaks when; the transcript.
"use strict";

const OUTPUT_RATE = 24000;
const TIMELINE_SECONDS = 20;
const VIDEO_INTERVAL_MS = 200; // one frame per 200 ms micro-turn: the model takes at most one per micro-turn
const VIDEO_SIZE = 160; // the model's frame size (ModelConfig.video_size): the picture's centre square
const VIDEO_QUALITY = 0.8; // JPEG quality: about 5-8 kB a frame
const VIDEO_MAX_BUFFERED = 256 * 1024; // socket bytes not yet sent above which frames wait: audio first
const MODEL_EVENTS_KEPT = 2000;
const MIC_ACTIVE_RMS = 0.02;

const $ = (id) => document.getElementById(id);

// Everything the page knows, in one place (tests read window.microturn).
const state = {
  ws: null,
  audioContext: null,
  micStream: null,
  captureNode: null,
  camera: {
    stream: null,
    timer: null,
    canvas: null,
    starting: false, // the browser is being asked for the camera
    encoding: false, // a frame is being encoded (the next tick is skipped rather than queued)
    sent: 0, // frames sent
    skipped: 0, // ticks without a frame: still encoding, or the socket backed up
    received: null, // the server's last microturn.video.received
    problem: null, // the last camera problem shown on the page
  },
  playing: [], // scheduled AudioBufferSourceNodes, {node, start, end}
  playhead: 0, // audioContext time at which the next model chunk starts
  item: null, // the model item being played: {id, startedAt (ctx time), element}
  extension: false, // the server speaks the duplex extension (microturn.* events)
  floor: "listening",
  segments: { mic: [], heard: [], model: [] }, // [startSec, endSec|null] in performance time
  stats: { events: {}, audioDeltas: 0, samplesReceived: 0, samplesPlayed: 0, sent: 0 },
  // When the model's output arrived: {type, at (Unix ms), text?} for response.created, audio and words.
  modelEvents: [],
};
window.microturn = state;

const now = () => performance.now() / 1000;

function setStatus(text) { $("status").textContent = text; }

function send(event) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(event));
    state.stats.sent += 1;
  }
}

// ---- base64 <-> PCM16 ------------------------------------------------------------------------------
function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function base64ToFloat32(b64) {
  const binary = atob(b64);
  const view = new DataView(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i++) view.setUint8(i, binary.charCodeAt(i));
  const out = new Float32Array(binary.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 32768;
  return out;
}

// ---- timeline --------------------------------------------------------------------------------------
function mark(row, active) {
  const rows = state.segments[row];
  const open = rows.length && rows[rows.length - 1][1] === null;
  if (active && !open) rows.push([now(), null]);
  if (!active && open) rows[rows.length - 1][1] = now();
}

function markModelAudio(startCtx, endCtx) {
  // Converted from audio-context time to performance time, so bars show when the audio plays.
  const offset = now() - state.audioContext.currentTime;
  state.segments.model.push([startCtx + offset, endCtx + offset]);
}

function drawTimeline() {
  const canvas = $("timeline");
  const ctx = canvas.getContext("2d");
  const t = now();
  const width = canvas.width;
  const x = (s) => width - ((t - s) / TIMELINE_SECONDS) * width;
  ctx.clearRect(0, 0, width, canvas.height);
  const rows = [["mic", "#9ecae1", 10], ["heard", "#3182bd", 40], ["model", "#e6550d", 75]];
  for (const [name, colour, y] of rows) {
    ctx.fillStyle = colour;
    const kept = state.segments[name].filter(([, end]) => end === null || end > t - TIMELINE_SECONDS);
    state.segments[name] = kept;
    for (const [start, end] of kept) {
      const x0 = Math.max(0, x(start));
      const x1 = Math.min(width, x(end === null ? t : end));
      if (x1 > x0) ctx.fillRect(x0, y, Math.max(1, x1 - x0), 25);
    }
  }
  ctx.fillStyle = "#bbb";
  for (let s = Math.ceil(t - TIMELINE_SECONDS); s <= t; s++) {
    if (s % 5 === 0) ctx.fillRect(x(s), canvas.height - 8, 1, 8);
  }
  requestAnimationFrame(drawTimeline);
}

// ---- transcript ------------------------------------------------------------------------------------
function addTurn(kind, text, id) {
  const div = document.createElement("div");
  div.className = `turn ${kind}`;
  div.textContent = text;
  if (id) div.dataset.item = id;
  $("transcript").appendChild(div);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return div;
}

function modelTurn(itemId) {
  return document.querySelector(`.turn.model[data-item="${CSS.escape(itemId)}"]`) || addTurn("model", "", itemId);
}

// ---- playback --------------------------------------------------------------------------------------
function play(samples, itemId) {
  const ctx = state.audioContext;
  if (!ctx) return;
  const buffer = ctx.createBuffer(1, samples.length, OUTPUT_RATE);
  buffer.copyToChannel(samples, 0);
  const node = ctx.createBufferSource();
  node.buffer = buffer;
  node.connect(ctx.destination);
  const start = Math.max(ctx.currentTime + 0.03, state.playhead);
  const entry = { node, start, end: start + buffer.duration };
  node.onended = () => {
    state.playing = state.playing.filter((p) => p !== entry);
    if (entry.completed !== false) state.stats.samplesPlayed += samples.length;
  };
  node.start(start);
  state.playing.push(entry);
  state.playhead = entry.end;
  if (!state.item || state.item.id !== itemId) state.item = { id: itemId, startedAt: start };
  markModelAudio(start, entry.end);
}

// Stop every scheduled chunk now; returns how many ms of the current item the user heard.
function stopPlayback() {
  const ctx = state.audioContext;
  if (!ctx) return 0;
  const t = ctx.currentTime;
  for (const entry of state.playing) {
    entry.completed = false;
    if (entry.start < t) state.stats.samplesPlayed += Math.round((t - entry.start) * OUTPUT_RATE);
    try { entry.node.stop(); } catch (e) { /* already stopped */ }
  }
  state.playing = [];
  state.playhead = t;
  const offset = now() - t;
  for (const seg of state.segments.model) seg[1] = Math.min(seg[1], t + offset);
  const heard = state.item ? Math.max(0, (t - state.item.startedAt) * 1000) : 0;
  return Math.round(heard);
}

// ---- server events ---------------------------------------------------------------------------------
const handlers = {
  "session.created": () => setStatus("connected: talk, type, or press Speak now"),
  "error": (e) => addTurn("note", `error: ${e.error.message}`),
  "input_audio_buffer.speech_started": () => {
    mark("heard", true);
    if (!state.extension) stopPlayback(); // standard clients stop; the duplex model says itself if it yields
  },
  "input_audio_buffer.speech_stopped": () => mark("heard", false),
  "response.output_audio.delta": (e) => {
    const samples = base64ToFloat32(e.delta);
    state.stats.audioDeltas += 1;
    state.stats.samplesReceived += samples.length;
    play(samples, e.item_id);
  },
  "response.output_audio_transcript.delta": (e) => { modelTurn(e.item_id).textContent += e.delta; },
  "response.output_text.delta": (e) => { modelTurn(e.item_id).textContent += e.delta; },
  "conversation.item.truncated": () => stopPlayback(),
  "response.done": (e) => {
    const item = (e.response.output || [])[0];
    if (!item) return;
    const el = modelTurn(item.id);
    const part = item.content && item.content[0];
    if (part) el.textContent = part.transcript ?? part.text ?? el.textContent;
    if (e.response.status !== "completed") el.classList.add("cut");
  },
  "microturn.video.received": (e) => onCameraReport(e),
  "microturn.floor": (e) => {
    state.extension = true;
    state.floor = e.floor;
    $("floor").textContent = `floor: ${e.floor}`;
    if (e.floor === "yielding") stopPlayback();
  },
};

const TIMED_EVENTS = new Set([
  "response.created", "response.output_audio.delta", "response.output_audio_transcript.delta",
  "response.output_text.delta",
]);

function onMessage(message) {
  let event;
  try { event = JSON.parse(message.data); } catch (e) { return; }
  state.stats.events[event.type] = (state.stats.events[event.type] || 0) + 1;
  if (TIMED_EVENTS.has(event.type)) {
    const entry = { type: event.type, at: performance.timeOrigin + performance.now() };
    if (event.type.endsWith("transcript.delta") || event.type === "response.output_text.delta") entry.text = event.delta;
    state.modelEvents.push(entry);
    if (state.modelEvents.length > MODEL_EVENTS_KEPT) state.modelEvents.shift();
  }
  const handler = handlers[event.type];
  if (handler) handler(event);
}

// ---- media -----------------------------------------------------------------------------------------
async function startMicrophone() {
  const ctx = state.audioContext;
  await ctx.audioWorklet.addModule("/static/worklet.js");
  state.micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const source = ctx.createMediaStreamSource(state.micStream);
  state.captureNode = new AudioWorkletNode(ctx, "microturn-capture");
  state.captureNode.port.onmessage = ({ data }) => {
    mark("mic", data.rms > MIC_ACTIVE_RMS);
    send({ type: "input_audio_buffer.append", audio: bytesToBase64(new Uint8Array(data.pcm)) });
  };
  source.connect(state.captureNode);
}

// The camera: the picture's centre square, drawn at the model's frame size, sent as JPEG once per
// micro-turn. It never holds up the microphone: frames are encoded asynchronously, a tick is skipped while
// the previous frame is still encoding or while the socket is backed up, and a camera that fails or
// vanishes only turns itself off, with a message on the page.
function setCameraStatus(text, problem = false) {
  const el = $("camera-status");
  el.textContent = text;
  el.classList.toggle("problem", problem);
  if (problem) state.camera.problem = text;
}

function cameraErrorMessage(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "camera: permission denied. Allow the camera for this page in the browser's site settings, then tick camera again (the microphone goes on).";
    case "NotFoundError":
    case "OverconstrainedError":
      return "camera: no camera found. Connect one, then tick camera again.";
    case "NotReadableError":
    case "AbortError":
      return "camera: the camera could not be started (is another application using it?).";
    default:
      return `camera: ${err && err.message ? err.message : err}`;
  }
}

async function startCamera() {
  const cam = state.camera;
  if (cam.stream || cam.starting) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("this page cannot use a camera here (it needs https or localhost)"), { name: "TypeError" });
  }
  setCameraStatus("camera: starting...");
  cam.starting = true;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15 } },
      audio: false,
    });
  } finally {
    cam.starting = false;
  }
  if (!state.ws || !$("camera").checked || cam.stream) { // hung up, or unticked, while the browser asked
    stream.getTracks().forEach((t) => t.stop());
    if (!cam.stream) setCameraStatus("");
    return;
  }
  cam.stream = stream;
  const track = stream.getVideoTracks()[0];
  track.addEventListener("ended", () => cameraLost("camera: the camera was disconnected or stopped. Tick camera to try again."));
  track.addEventListener("mute", () => setCameraStatus("camera: no picture from the camera (paused by the system?)", true));
  track.addEventListener("unmute", () => setCameraStatus("camera: on"));
  const video = $("preview");
  video.srcObject = stream;
  $("camera-panel").hidden = false;
  try {
    await video.play();
  } catch (err) {
    if (cam.stream !== stream) return; // stopped while the preview started
    throw err;
  }
  if (cam.stream !== stream) return;
  if (!cam.canvas) {
    cam.canvas = document.createElement("canvas");
    cam.canvas.width = cam.canvas.height = VIDEO_SIZE;
  }
  cam.problem = null;
  setCameraStatus("camera: on");
  cam.timer = setInterval(sendFrame, VIDEO_INTERVAL_MS);
}

function sendFrame() {
  const cam = state.camera;
  const video = $("preview");
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN || !cam.stream) return;
  const track = cam.stream.getVideoTracks()[0];
  if (!track || track.readyState === "ended") {
    cameraLost("camera: the camera was disconnected or stopped. Tick camera to try again.");
    return;
  }
  if (cam.encoding || state.ws.bufferedAmount > VIDEO_MAX_BUFFERED || video.readyState < 2 || !video.videoWidth) {
    cam.skipped += 1;
    return;
  }
  const w = video.videoWidth, h = video.videoHeight, side = Math.min(w, h);
  cam.canvas.getContext("2d").drawImage(video, (w - side) / 2, (h - side) / 2, side, side, 0, 0, VIDEO_SIZE, VIDEO_SIZE);
  cam.encoding = true;
  cam.canvas.toBlob(async (blob) => {
    try {
      if (!blob || !state.ws) return;
      const bytes = new Uint8Array(await blob.arrayBuffer());
      send({ type: "microturn.video.frame", image: bytesToBase64(bytes) });
      cam.sent += 1;
    } finally {
      cam.encoding = false;
    }
  }, "image/jpeg", VIDEO_QUALITY);
}

function stopCamera() {
  const cam = state.camera;
  clearInterval(cam.timer);
  cam.timer = null;
  if (cam.stream) cam.stream.getTracks().forEach((t) => t.stop());
  cam.stream = null;
  $("preview").srcObject = null;
  $("camera-panel").hidden = true;
}

// The camera failed to start, or went away: it turns off, the rest of the session goes on.
function cameraLost(message) {
  stopCamera();
  $("camera").checked = false;
  setCameraStatus(message, true);
}

function onCameraReport(e) {
  state.camera.received = e;
  if (state.camera.stream) {
    const refused = e.refused ? `, ${e.refused} refused` : "";
    setCameraStatus(`camera: on, ${e.frames} frames received by the server, ${e.used} seen by the model${refused}`);
  }
}

// ---- connection ------------------------------------------------------------------------------------
function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const key = $("apikey").value.trim();
  const protocols = key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"];
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${scheme}//${location.host}/v1/realtime?model=microturn`, protocols);
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("could not connect (wrong API key?)"));
    ws.onmessage = onMessage;
    ws.onclose = () => { setStatus("disconnected"); setConnected(false); stopCamera(); };
  });
}

function setConnected(connected) {
  $("start").disabled = connected;
  for (const id of ["stop", "speak", "cancel", "text", "send"]) $(id).disabled = !connected;
}

async function start() {
  try {
    setStatus("connecting...");
    state.audioContext = new AudioContext();
    await state.audioContext.resume();
    state.ws = await connect();
    setConnected(true);
    await startMicrophone();
    // Not awaited: a camera permission prompt, or a camera that fails, never holds up the audio.
    if ($("camera").checked) startCamera().catch((err) => cameraLost(cameraErrorMessage(err)));
  } catch (err) {
    setStatus(`error: ${err.message}`);
    hangUp();
  }
}

function hangUp() {
  stopPlayback();
  stopCamera();
  if (!state.camera.problem) setCameraStatus("");
  if (state.micStream) state.micStream.getTracks().forEach((t) => t.stop());
  if (state.ws) state.ws.close();
  if (state.audioContext) state.audioContext.close();
  Object.assign(state, { ws: null, micStream: null, audioContext: null, captureNode: null, item: null });
  setConnected(false);
  mark("mic", false);
  mark("heard", false);
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", hangUp);
$("speak").addEventListener("click", () => send({ type: "response.create" }));
$("cancel").addEventListener("click", () => {
  const itemId = state.item && state.item.id;
  const heard = stopPlayback();
  send({ type: "response.cancel" });
  if (itemId) send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: heard });
});
$("camera").addEventListener("change", (e) => {
  if (!e.target.checked) {
    stopCamera();
    setCameraStatus("");
  } else if (!state.ws) {
    setCameraStatus("camera: it starts when you start talking");
  } else {
    startCamera().catch((err) => cameraLost(cameraErrorMessage(err)));
  }
});
$("typed").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  addTurn("user", text);
  $("text").value = "";
});
requestAnimationFrame(drawTimeline);
