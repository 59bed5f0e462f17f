// Microphone capture on the audio thread: downsample to 24 kHz, cut 200 ms frames, post them as PCM16.
// The AudioContext runs at the device rate (often 48 kHz); each output sample averages the input samples
// of its 1/24000 s window (a box low-pass, enough for speech), carrying the fractional position across
// render quanta so that frames join without clicks.

const TARGET_RATE = 24000;
const FRAME_SAMPLES = 4800; // 200 ms

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // input samples consumed inside the current output window
    this.sum = 0;
    this.count = 0;
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = Math.round(clipped * 32767);
    if (this.filled === FRAME_SAMPLES) {
      let energy = 0;
      for (let i = 0; i < FRAME_SAMPLES; i++) energy += (this.frame[i] / 32768) ** 2;
      this.port.postMessage({ pcm: this.frame.buffer, rms: Math.sqrt(energy / FRAME_SAMPLES) }, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
    }
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      this.sum += channel[i];
      this.count += 1;
      this.position += 1;
      if (this.position >= this.step) {
        this.emit(this.sum / this.count);
        this.position -= this.step;
        this.sum = 0;
        this.count = 0;
      }
    }
    return true;
  }
}

registerProcessor("microturn-capture", CaptureProcessor);
