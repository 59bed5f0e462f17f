// The microturn browser client: Realtime protocol over a WebSocket, plus the duplex extension
// (docs/protocol.md). Microphone -> AudioWorklet (24 kHz PCM16, 200 ms frames) -> input_audio_buffer.append;
// camera -> JPEG -> microturn.video.frame; model audio -> scheduled AudioBuffers, stopped at once when the
// model yields; a scrolling timeline of who speaks when; the transcript.
"use strict";

const OUTPUT_RATE = 24000;
const TIMELINE_SECONDS = 20;
const VIDEO_INTERVAL_MS = 500; // ~2 fps; the server samples frames at the model's own rate
const MIC_ACTIVE_RMS = 0.02;

const $ = (id) => document.getElementById(id);

// Everything the page knows, in one place (tests read window.microturn).
const state = {
  ws: null,
  audioContext: null,
  micStream: null,
  captureNode: null,
  cameraStream: null,
  cameraTimer: null,
  playing: [], // scheduled AudioBufferSourceNodes, {node, start, end}
  playhead: 0, // audioContext time at which the next model chunk starts
  item: null, // the model item being played: {id, startedAt (ctx time), element}
  extension: false, // the server speaks the duplex extension (microturn.* events)
  floor: "listening",
  segments: { mic: [], heard: [], model: [] }, // [startSec, endSec|null] in performance time
  stats: { events: {}, audioDeltas: 0, samplesReceived: 0, samplesPlayed: 0, sent: 0 },
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
  "microturn.floor": (e) => {
    state.extension = true;
    state.floor = e.floor;
    $("floor").textContent = `floor: ${e.floor}`;
    if (e.floor === "yielding") stopPlayback();
  },
};

function onMessage(message) {
  let event;
  try { event = JSON.parse(message.data); } catch (e) { return; }
  state.stats.events[event.type] = (state.stats.events[event.type] || 0) + 1;
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

async function startCamera() {
  state.cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
  const video = $("preview");
  video.srcObject = state.cameraStream;
  video.hidden = false;
  await video.play();
  const canvas = document.createElement("canvas");
  canvas.width = 320;
  canvas.height = 240;
  state.cameraTimer = setInterval(() => {
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    send({ type: "microturn.video.frame", image: canvas.toDataURL("image/jpeg", 0.7) });
  }, VIDEO_INTERVAL_MS);
}

function stopCamera() {
  clearInterval(state.cameraTimer);
  if (state.cameraStream) state.cameraStream.getTracks().forEach((t) => t.stop());
  state.cameraStream = null;
  $("preview").hidden = true;
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
    ws.onclose = () => { setStatus("disconnected"); setConnected(false); };
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
    if ($("camera").checked) await startCamera();
  } catch (err) {
    setStatus(`error: ${err.message}`);
    hangUp();
  }
}

function hangUp() {
  stopPlayback();
  stopCamera();
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
  if (!state.ws) return;
  if (e.target.checked) startCamera().catch((err) => setStatus(`camera: ${err.message}`));
  else stopCamera();
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
