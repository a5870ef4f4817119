// The live video, read with fetch() so that the panel knows which frame it shows.
//
// `/video.mjpg` is a multipart stream (boundary `frame`); each part is one JPEG with its
// headers: Content-Type, Content-Length and, once frames are processed, X-Frame (the source's
// frame number), X-Frame-Time (stream seconds) and X-Scene (scene cuts so far), the same
// numbers as the `tracks` message. An <img src="/video.mjpg"> would show the pictures without
// saying which is which; here each JPEG becomes a Blob object URL shown in the <img>, and the
// frame is reported only once its picture is displayed, so the overlay draws the boxes of that
// picture and of no other.
//
// Pictures are shown one at a time: while one decodes, only the latest part received waits
// (older ones are dropped). The previous object URL is revoked once the next picture has
// loaded; on an error or the end of the stream the picture is cleared (a frozen picture must
// not pass for live) and onError is told (the panel shows the camera status and retries).

import { authHeaders } from "./api.js";

const ENC = new TextEncoder();
const BOUNDARY = ENC.encode("--frame\r\n");
const HEAD_END = ENC.encode("\r\n\r\n");
const MAX_HEAD = 16 * 1024; // bytes of part headers
const MAX_PART = 32 * 1024 * 1024; // bytes of one JPEG
const NO_FRAME = Object.freeze({ frame: null, frameTime: null, scene: null });

/** Index of `needle` in hay[from, to), or -1. */
function indexOf(hay, needle, from, to) {
  const first = needle[0], last = to - needle.length, view = hay.subarray(0, to);
  for (let i = view.indexOf(first, from); i !== -1 && i <= last; i = view.indexOf(first, i + 1)) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

const intOf = (v) => (v != null && /^-?\d+$/.test(v.trim()) ? Number(v) : null);
function numOf(v) {
  if (v == null || v.trim() === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

/** Which frame a part is, from its headers ({frame, frameTime, scene}; all null without X-Frame). */
export function frameOf(headers) {
  const frame = intOf(headers.get("x-frame"));
  if (frame === null) return NO_FRAME;
  return { frame, frameTime: numOf(headers.get("x-frame-time")), scene: intOf(headers.get("x-scene")) };
}

/**
 * An incremental parser of the multipart stream: push() the body's chunks as they come (a part
 * may span chunks, a chunk may hold several parts); onPart({headers: Map, body: Uint8Array})
 * for each complete part. Throws on a malformed part (the stream is then restarted).
 */
export class PartParser {
  constructor(onPart) {
    this.onPart = onPart;
    this.buf = new Uint8Array(256 * 1024);
    this.start = 0; // unread bytes are buf[start, end)
    this.end = 0;
    this.headers = null; // the current part's, once read (then its body is awaited)
    this.length = 0;
    this.decoder = new TextDecoder("latin1");
  }

  push(chunk) {
    this.append(chunk);
    for (;;) {
      const { buf } = this;
      if (this.headers === null) {
        const at = indexOf(buf, BOUNDARY, this.start, this.end);
        if (at < 0) { // keep only what may be the start of a boundary
          this.start = Math.max(this.start, this.end - (BOUNDARY.length - 1));
          return;
        }
        if (this.end - at - BOUNDARY.length < 2) { // not even the end of the header block yet
          this.start = at;
          return;
        }
        const from = at + BOUNDARY.length;
        let stop, next;
        if (buf[from] === 13 && buf[from + 1] === 10) { // no headers at all
          stop = from;
          next = from + 2;
        } else {
          stop = indexOf(buf, HEAD_END, from, this.end);
          if (stop < 0) {
            if (this.end - from > MAX_HEAD) throw new Error("video: part headers too long");
            this.start = at;
            return;
          }
          next = stop + HEAD_END.length;
        }
        const headers = new Map();
        for (const line of this.decoder.decode(buf.subarray(from, stop)).split("\r\n")) {
          const colon = line.indexOf(":");
          if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
        }
        const length = intOf(headers.get("content-length") ?? null);
        if (length === null || length < 0 || length > MAX_PART) throw new Error("video: part without a valid Content-Length");
        this.headers = headers;
        this.length = length;
        this.start = next;
      }
      if (this.end - this.start < this.length) return;
      const body = this.buf.slice(this.start, this.start + this.length); // a copy: buf is reused
      const headers = this.headers;
      this.start += this.length;
      this.headers = null;
      this.onPart({ headers, body });
    }
  }

  append(chunk) {
    if (this.start === this.end) this.start = this.end = 0;
    if (this.end + chunk.length > this.buf.length) {
      const used = this.end - this.start;
      if (used + chunk.length > this.buf.length) { // grow
        let size = this.buf.length;
        while (size < used + chunk.length) size *= 2;
        const bigger = new Uint8Array(size);
        bigger.set(this.buf.subarray(this.start, this.end));
        this.buf = bigger;
      } else {
        this.buf.copyWithin(0, this.start, this.end);
      }
      this.start = 0;
      this.end = used;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }
}

/**
 * The live video in `img`, from `path`. Callbacks:
 *   onSwitch(frame)  a picture of that frame is about to replace the one shown;
 *   onFrame(frame)   the picture of that frame is displayed ({frame, frameTime, scene}, null
 *                    numbers for a part without X-Frame or when the picture is cleared);
 *   onLive()         a picture of the current stream was displayed;
 *   onError(error)   the stream failed or ended (the picture is cleared; restart() to retry).
 * Returns {restart, stop}: restart() aborts the current request and opens a new one.
 */
export function initVideo({ img, path, onSwitch = () => {}, onFrame = () => {}, onLive = () => {}, onError = () => {} }) {
  let gen = 0; // the current stream; parts and failures of older ones are ignored
  let ctrl = null; // its AbortController
  let pending = null; // {url: null, blob, frame, gen}: the latest part not yet shown
  let busy = false; // a picture is being loaded
  let current = null; // {url, frame}: the picture shown

  async function pump() {
    if (busy) return;
    busy = true;
    try {
      while (pending) {
        const part = pending;
        pending = null;
        if (part.gen === gen) await show(part);
      }
    } finally {
      busy = false;
    }
  }

  async function show(part) {
    const url = URL.createObjectURL(part.blob);
    onSwitch(part.frame);
    img.src = url;
    let ok = true;
    try {
      await img.decode(); // loaded and decoded: it is what the page paints now
    } catch {
      ok = img.complete && img.naturalWidth > 0;
    }
    if (img.getAttribute("src") !== url) { // cleared or replaced meanwhile (see clear())
      URL.revokeObjectURL(url);
      return;
    }
    if (!ok) { // a broken picture: keep showing the previous one
      URL.revokeObjectURL(url);
      if (current) img.src = current.url;
      else img.removeAttribute("src");
      onFrame(current ? current.frame : NO_FRAME);
      return;
    }
    const previous = current;
    current = { url, frame: part.frame };
    if (previous) URL.revokeObjectURL(previous.url);
    onFrame(part.frame);
    if (part.gen === gen) onLive();
  }

  /** No picture: nothing left that could pass for live. */
  function clear() {
    pending = null;
    img.removeAttribute("src");
    if (current) URL.revokeObjectURL(current.url);
    current = null;
    onFrame(NO_FRAME);
  }

  async function read(my, signal) {
    const res = await fetch(path, { headers: authHeaders(), cache: "no-store", signal });
    if (!res.ok || !res.body) throw new Error(`video: HTTP ${res.status}`);
    const reader = res.body.getReader();
    const parser = new PartParser(({ headers, body }) => {
      if (my !== gen) return;
      const type = headers.get("content-type") || "image/jpeg";
      pending = { blob: new Blob([body], { type }), frame: frameOf(headers), gen: my };
      pump();
    });
    for (;;) {
      const { done, value } = await reader.read();
      if (done || my !== gen) return;
      parser.push(value);
    }
  }

  function stop() {
    gen++;
    pending = null;
    if (ctrl) ctrl.abort();
    ctrl = null;
  }

  function restart() {
    stop();
    const my = gen;
    const ac = (ctrl = new AbortController());
    const failed = (error) => {
      if (my !== gen || ac.signal.aborted) return; // restarted or stopped meanwhile
      stop();
      clear();
      onError(error);
    };
    read(my, ac.signal).then(() => failed(new Error("video: the stream ended")), failed);
  }

  return { restart, stop };
}
