// framecast page: one session per page, over WebRTC (video track + data channel) or WebSocket (JPEG frames).
"use strict";

const $ = (id) => document.getElementById(id);
const HEADER_BYTES = 12; // frame index u32, height u16, width u16, format u8, 3 pad (see server/encode.py)
const MIME = { 1: "image/jpeg", 2: "image/png" };

class Page {
  constructor() {
    this.transport = null;
    this.frames = 0;
    this.times = [];
    $("start").onclick = () => this.start();
    $("stop").onclick = () => this.stop();
    $("send-prompt").onclick = () => this.sendPrompt();
    $("prompt").onkeydown = (e) => { if (e.key === "Enter") this.sendPrompt(); };
    setInterval(() => this.showFps(), 500);
    window.addEventListener("pagehide", () => this.transport && this.transport.close());
  }

  status(text, error = false) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  async start() {
    $("start").disabled = true;
    try {
      if (!this.transport) this.transport = await this.connect($("transport").value);
      const msg = { type: "start", prompt: $("prompt").value, seed: Number($("seed").value || 0) };
      if ($("steps").value) msg.steps = Number($("steps").value);
      if ($("fps").value) msg.fps = Number($("fps").value);
      this.transport.send(msg);
    } catch (err) {
      this.status(String(err.message || err), true);
      $("start").disabled = false;
    }
  }

  stop() {
    if (this.transport) this.transport.send({ type: "stop" });
  }

  sendPrompt() {
    if (this.transport) this.transport.send({ type: "prompt", text: $("prompt").value });
  }

  async connect(kind) {
    if (kind !== "ws" && window.RTCPeerConnection) {
      try {
        return await RtcTransport.open(this);
      } catch (err) {
        if (kind === "webrtc") throw err;
        console.warn("WebRTC failed, using the WebSocket", err);
      }
    }
    return await WsTransport.open(this);
  }

  onMessage(msg) {
    if (msg.type === "hello") this.status(`connected (${msg.session}, ${msg.frame_size.join("x")})`);
    else if (msg.type === "started") this.onStarted(msg);
    else if (msg.type === "stopped") this.onStopped(msg);
    else if (msg.type === "prompt") this.status(`prompt: ${msg.text}`);
    else if (msg.type === "stats") this.onStats(msg);
    else if (msg.type === "error") this.onError(msg);
  }

  onStarted(msg) {
    this.status(`streaming at ${msg.fps} fps, ${msg.steps} steps, seed ${msg.seed}`);
    $("stop").disabled = false;
    $("send-prompt").disabled = false;
  }

  onStopped(msg) {
    this.status(`stopped (${msg.reason})`);
    $("start").disabled = false;
    $("stop").disabled = true;
    $("send-prompt").disabled = true;
  }

  onError(msg) {
    this.status(`${msg.code}: ${msg.message}`, true);
    if (msg.code === "over_capacity" || msg.code === "server_full") $("start").disabled = false;
  }

  onStats(s) {
    $("latency-out").textContent = s.latency_ms;
    $("prompt-latency-out").textContent = s.prompt_latency_ms ?? "-";
    $("dropped-out").textContent = s.dropped;
    $("misses-out").textContent = s.misses;
  }

  onFrame() {
    this.frames += 1;
    this.times.push(performance.now());
    $("frames-out").textContent = this.frames;
  }

  showFps() {
    const now = performance.now();
    this.times = this.times.filter((t) => t > now - 2000);
    const n = this.times.length;
    $("fps-out").textContent = n > 1 ? ((n - 1) * 1000 / (this.times[n - 1] - this.times[0])).toFixed(1) : "-";
  }

  onClosed(reason) {
    this.transport = null;
    this.onStopped({ reason });
  }

  // The pixels on screen, as [r, g, b, a, ...] (for tests and screenshots).
  snapshot() {
    const canvas = $("canvas");
    const video = $("video");
    if (!video.hidden && video.videoWidth) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
    }
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    return { width: canvas.width, height: canvas.height,
             data: Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data) };
  }
}

class WsTransport {
  static open(page) {
    return new Promise((resolve, reject) => {
      const proto = location.protocol === "https:" ? "wss" : "ws";
      const ws = new WebSocket(`${proto}://${location.host}/ws`);
      ws.binaryType = "arraybuffer";
      const t = new WsTransport(page, ws);
      ws.onopen = () => resolve(t);
      ws.onerror = () => reject(new Error("WebSocket connection failed"));
    });
  }

  constructor(page, ws) {
    this.page = page;
    this.ws = ws;
    this.kind = "ws";
    this.drawing = Promise.resolve();
    $("video").hidden = true;
    $("canvas").hidden = false;
    ws.onmessage = (e) => (typeof e.data === "string" ? page.onMessage(JSON.parse(e.data)) : this.frame(e.data));
    ws.onclose = (e) => page.onClosed(e.reason || "connection closed");
  }

  send(msg) {
    this.ws.send(JSON.stringify(msg));
  }

  close() {
    this.ws.close();
  }

  frame(buf) {
    const view = new DataView(buf);
    const [h, w, code] = [view.getUint16(4), view.getUint16(6), view.getUint8(8)];
    const canvas = $("canvas");
    this.drawing = this.drawing.then(async () => {
      if (canvas.width !== w || canvas.height !== h) [canvas.width, canvas.height] = [w, h];
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      if (code === 3) {
        const rgb = new Uint8Array(buf, HEADER_BYTES);
        const img = ctx.createImageData(w, h);
        for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
          img.data.set([rgb[i], rgb[i + 1], rgb[i + 2], 255], j);
        }
        ctx.putImageData(img, 0, 0);
      } else {
        const bitmap = await createImageBitmap(new Blob([buf.slice(HEADER_BYTES)], { type: MIME[code] }));
        ctx.drawImage(bitmap, 0, 0);
      }
      this.page.onFrame();
    });
  }
}

class RtcTransport {
  static async open(page) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver("video", { direction: "recvonly" });
    const channel = pc.createDataChannel("control");
    const t = new RtcTransport(page, pc, channel);
    await pc.setLocalDescription(await pc.createOffer());
    await RtcTransport.gathered(pc);
    const res = await fetch("/rtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    const answer = await res.json();
    if (!res.ok) {
      pc.close();
      throw new Error(answer.message || `offer refused (${res.status})`);
    }
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    await t.opened;
    return t;
  }

  static gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      setTimeout(resolve, 2000);
    });
  }

  constructor(page, pc, channel) {
    this.page = page;
    this.pc = pc;
    this.channel = channel;
    this.kind = "webrtc";
    this.opened = new Promise((resolve, reject) => {
      channel.onopen = resolve;
      setTimeout(() => reject(new Error("WebRTC data channel did not open")), 10000);
    });
    channel.onmessage = (e) => page.onMessage(JSON.parse(e.data));
    channel.onclose = () => page.onClosed("data channel closed");
    const video = $("video");
    pc.ontrack = (e) => {
      video.srcObject = new MediaStream([e.track]);
      video.hidden = false;
      $("canvas").hidden = true;
      const tick = () => { page.onFrame(); video.requestVideoFrameCallback(tick); };
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
    };
  }

  send(msg) {
    this.channel.send(JSON.stringify(msg));
  }

  close() {
    this.channel.close();
    this.pc.close();
  }
}

window.framecast = new Page();
