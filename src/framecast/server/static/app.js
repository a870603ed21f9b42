// framecast page: one session per page, over WebRTC (video track + data channel) or WebSocket (JPEG frames).
// Input (video to video): none, the webcam (a WebRTC track the page sends, or JPEG frames over the WebSocket)
// or a video file (uploaded to /upload with the session's token, then streamed by the server).
"use strict";

const $ = (id) => document.getElementById(id);
const HEADER_BYTES = 12; // frame index u32, height u16, width u16, format u8, 3 pad (see server/encode.py)
const MIME = { 1: "image/jpeg", 2: "image/png" };
const TOKEN = new URLSearchParams(location.search).get("token"); // the server's access token, if it has one

// A path of this server with the access token (when the page was opened with one) and `params`.
function api(path, params = {}) {
  const query = new URLSearchParams(params);
  if (TOKEN) query.set("access_token", TOKEN);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

class Page {
  constructor() {
    this.transport = null;
    this.frames = 0;
    this.times = [];
    this.token = null; // upload token of the session (from hello)
    this.frameSize = [64, 64];
    this.cameraStream = null;
    $("source").onchange = () => { $("file").hidden = $("source").value !== "file"; };
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
      const source = $("source").value;
      if (source === "file" && !$("file").files[0]) throw new Error("choose a video file first");
      const camera = source === "webcam" ? await this.camera() : null;
      if (this.transport && !this.transport.fits(source)) { // a WebRTC connection without a webcam track
        this.transport.close();
        this.transport = null;
      }
      if (!this.transport) this.transport = await this.connect($("transport").value, camera);
      if (source === "file") await this.upload();
      const msg = { type: "start", prompt: $("prompt").value, seed: Number($("seed").value || 0) };
      if ($("steps").value) msg.steps = Number($("steps").value);
      if ($("fps").value) msg.fps = Number($("fps").value);
      if (source !== "none") msg.source = source;
      if (source !== "none" && $("strength").value) msg.strength = Number($("strength").value);
      this.transport.sendCamera(null); // frames of an earlier webcam stream stop before the start
      this.transport.send(msg);
      if (source === "webcam") this.transport.sendCamera(camera);
    } catch (err) {
      this.status(String(err.message || err), true);
      $("start").disabled = false;
    }
  }

  async camera() {
    if (this.cameraStream && this.cameraStream.getVideoTracks().some((t) => t.readyState === "live")) {
      return this.cameraStream;
    }
    if (!navigator.mediaDevices) throw new Error("this browser gives no webcam access here (use https or localhost)");
    this.cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: false });
    this.cameraStream.getVideoTracks()[0].onended = () => this.status("the webcam stopped", true);
    $("input-preview").srcObject = this.cameraStream;
    $("input-preview").hidden = false;
    return this.cameraStream;
  }

  async upload() {
    const file = $("file").files[0];
    this.status(`uploading ${file.name}...`);
    const type = file.type.startsWith("video/") ? file.type : "application/octet-stream";
    const res = await fetch(api("/upload", { token: this.token }), { method: "POST", body: file,
                                                                       headers: { "Content-Type": type } });
    const body = await res.json();
    if (!res.ok) throw new Error(body.message || `upload refused (${res.status})`);
    this.status(`uploaded ${file.name} (${body.size.join("x")}, ${body.fps} fps)`);
  }

  stop() {
    if (!this.transport) return;
    this.transport.sendCamera(null); // no webcam frame after the stop
    this.transport.send({ type: "stop" });
  }

  sendPrompt() {
    if (this.transport) this.transport.send({ type: "prompt", text: $("prompt").value });
  }

  // A transport whose session has said hello (its upload token and frame size are known).
  async connect(kind, camera) {
    let noHello = null;
    const hello = new Promise((resolve, reject) => {
      this.helloSeen = resolve;
      this.helloLost = () => reject(new Error($("status").textContent)); // closed first: keep the server's words
      noHello = () => reject(new Error("the server sent no hello"));
    });
    hello.catch(() => {}); // awaited below; no unhandled rejection if opening fails first
    const transport = await this.open(kind, camera); // WebRTC first may take its 10 s before the fallback
    $("set-transport").textContent = transport.kind === "ws" ? "WebSocket" : "WebRTC";
    const timer = setTimeout(noHello, 10000); // counted from the transport that opened
    try {
      await hello;
    } finally {
      clearTimeout(timer);
    }
    return transport;
  }

  async open(kind, camera) {
    if (kind !== "ws" && window.RTCPeerConnection) {
      try {
        return await RtcTransport.open(this, camera);
      } catch (err) {
        if (kind === "webrtc") throw err;
        console.warn("WebRTC failed, using the WebSocket", err);
      }
    }
    return await WsTransport.open(this);
  }

  onMessage(msg) {
    if (msg.type === "hello") this.onHello(msg);
    else if (msg.type === "started") this.onStarted(msg);
    else if (msg.type === "stopped") this.onStopped(msg);
    else if (msg.type === "prompt") this.status(`prompt: ${msg.text}`);
    else if (msg.type === "stats") this.onStats(msg);
    else if (msg.type === "error") this.onError(msg);
    else if (msg.type === "input_ended") this.onInputEnded(msg);
  }

  onHello(msg) {
    this.token = msg.upload_token;
    this.frameSize = msg.frame_size;
    $("set-session").textContent = `${msg.session} (${msg.frame_size.join("x")})`;
    if (this.helloSeen) this.helloSeen();
    this.status(`connected (${msg.session}, ${msg.frame_size.join("x")})`);
  }

  onInputEnded(msg) {
    if (this.transport) this.transport.sendCamera(null);
    if (this.transport && msg.source === "webcam") this.transport.hasCamera = false; // reconnect to use it again
    this.status(msg.message, true);
  }

  onStarted(msg) {
    this.status(`streaming at ${msg.fps} fps, ${msg.steps} steps, seed ${msg.seed}`);
    [$("set-fps").textContent, $("set-steps").textContent, $("set-seed").textContent] = [msg.fps, msg.steps, msg.seed];
    $("set-source").textContent = msg.source;
    $("set-strength").textContent = msg.source === "none" ? "" : `strength ${msg.strength ?? "auto"}`;
    $("stop").disabled = false;
    $("send-prompt").disabled = false;
  }

  onStopped(msg) {
    if (this.transport) this.transport.sendCamera(null);
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
    $("input-readout").hidden = !s.input;
    if (s.input) {
      $("input-frames-out").textContent = s.input.frames;
      $("input-dropped-out").textContent = s.input.dropped;
      $("strength-out").textContent = s.input.strength;
    }
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
    if (this.helloLost) this.helloLost();
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
      const ws = new WebSocket(`${proto}://${location.host}${api("/ws")}`);
      ws.binaryType = "arraybuffer";
      const t = new WsTransport(page, ws);
      ws.onopen = () => { t.isOpen = true; resolve(t); };
      ws.onerror = () => reject(new Error("WebSocket connection refused or failed (a server started with --token " +
                                          "needs the page opened as /?token=...)"));
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
    ws.onclose = (e) => this.isOpen && page.onClosed(e.reason || "connection closed"); // never opened: onerror says why
    this.timer = null;
  }

  fits() {
    return true;
  }

  send(msg) {
    this.ws.send(JSON.stringify(msg));
  }

  close() {
    this.sendCamera(null);
    this.ws.close();
  }

  // Webcam frames as JPEG binary messages, at the model's frame size and the stream's frame rate.
  sendCamera(stream) {
    clearInterval(this.timer);
    this.timer = null;
    if (!stream) return;
    const video = $("input-preview");
    const grab = document.createElement("canvas");
    [grab.height, grab.width] = this.page.frameSize;
    const fps = Number($("fps").value) || 16;
    this.timer = setInterval(() => {
      if (!stream.getVideoTracks().some((t) => t.readyState === "live")) return this.sendCamera(null); // camera gone
      if (video.readyState < 2 || this.ws.readyState !== WebSocket.OPEN) return;
      grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
      grab.toBlob((b) => b && b.arrayBuffer().then((buf) => this.ws.readyState === WebSocket.OPEN && this.ws.send(buf)),
        "image/jpeg", 0.85);
    }, 1000 / fps);
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
  static async open(page, camera) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    if (camera) pc.addTransceiver(camera.getVideoTracks()[0], { direction: "sendrecv", streams: [camera] });
    else pc.addTransceiver("video", { direction: "recvonly" });
    const channel = pc.createDataChannel("control");
    const t = new RtcTransport(page, pc, channel);
    t.hasCamera = Boolean(camera);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await RtcTransport.gathered(pc);
      const res = await fetch(api("/rtc/offer"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      });
      const answer = await res.json();
      if (!res.ok) throw new Error(answer.message || `offer refused (${res.status})`);
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
      await t.opened;
      return t;
    } catch (err) {
      t.abandon(); // the page falls back to the WebSocket: this peer connection must not linger
      throw err;
    }
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

  fits(source) {
    return source !== "webcam" || this.hasCamera;
  }

  sendCamera() {} // the webcam travels as the connection's own video track

  send(msg) {
    this.channel.send(JSON.stringify(msg));
  }

  close() {
    this.channel.close();
    this.pc.close();
  }

  // Close a connection that never became the page's transport, without telling the page it closed.
  abandon() {
    this.channel.onclose = this.channel.onmessage = this.pc.ontrack = null;
    this.close();
    $("video").srcObject = null;
    this.page.rtcAbandoned = (this.page.rtcAbandoned || 0) + 1; // for tests
  }
}

window.framecast = new Page();
