// The face boxes over the live video, drawn in the browser from the latest `tracks` message
// (the video itself is the camera's plain picture).
//
// The canvas covers the <img> exactly; the image is shown with object-fit: contain, so the
// frame's pixels are scaled by one factor and centred (letterboxed). Stale data is never left
// drawn: the overlay is cleared when a message lists no faces, when no message has come for
// STALE_MS, and while the camera is not connected.
//
// For tests (and anyone curious) the canvas carries what it shows: data-tracks (JSON list of
// {track_id, state, name, person_id, similarity}) and data-frame (the frame number, "" when clear).

import { make, sim, isNum, canOperate } from "./ui.js";

const STALE_MS = 1500;
const COLOURS = { known: "#35c46a", unknown: "#f0b429", pending: "#8c99a6", registering: "#4ea1ff" };

let canvas, img, layer, onRegister = () => {};
let latest = null; // {data, at}
let cameraOk = true;
const buttons = new Map(); // track_id -> its Register button (kept: a click must not miss it)

export function initOverlay({ canvasEl, imgEl, buttonLayer, register }) {
  canvas = canvasEl;
  img = imgEl;
  layer = buttonLayer;
  onRegister = register;
  canvas.dataset.tracks = "[]";
  canvas.dataset.frame = "";
  new ResizeObserver(() => draw()).observe(canvas);
  img.addEventListener("load", () => draw());
  setInterval(() => {
    if (latest && Date.now() - latest.at > STALE_MS) clearOverlay();
  }, 250);
}

/** A `tracks` message arrived. */
export function onTracks(data) {
  if (!cameraOk || !data || !Array.isArray(data.tracks)) return;
  latest = data.tracks.length ? { data, at: Date.now() } : null;
  draw();
}

/** The camera (source or MJPEG stream) is up or down; down clears the overlay. */
export function setCameraOk(ok) {
  cameraOk = !!ok;
  if (!cameraOk) clearOverlay();
}

export function clearOverlay() {
  latest = null;
  draw();
}

/** The faces drawn now (for the register dialog: the offered face's similarity). */
export const currentTrack = (id) => latest?.data.tracks.find((t) => t.track_id === id) || null;

function label(t) {
  const id = `#${t.track_id}`;
  switch (t.state) {
    case "known": return `${id} ${t.name || t.person_id || "known"}` + (isNum(t.similarity) ? ` ${sim(t.similarity)}` : "");
    case "unknown": return `${id} unknown`;
    case "registering": return `${id} registering`;
    default: return `${id} …`;
  }
}

/** Frame pixels -> canvas CSS pixels, as object-fit: contain shows the image. */
function mapping(data, cw, ch) {
  const nw = img.naturalWidth || data.width, nh = img.naturalHeight || data.height;
  const scale = Math.min(cw / nw, ch / nh);
  const ox = (cw - nw * scale) / 2, oy = (ch - nh * scale) / 2;
  // The boxes are in the frame's pixels; the image shown may have been resized from it.
  const fx = (nw / (data.width || nw)) * scale, fy = (nh / (data.height || nh)) * scale;
  return ([x1, y1, x2, y2]) => [ox + x1 * fx, oy + y1 * fy, ox + x2 * fx, oy + y2 * fy];
}

function draw() {
  if (!canvas) return;
  const cw = canvas.clientWidth, ch = canvas.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
    canvas.width = Math.round(cw * dpr);
    canvas.height = Math.round(ch * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cw, ch);
  const tracks = latest ? latest.data.tracks : [];
  canvas.dataset.tracks = JSON.stringify(tracks.map((t) => ({
    track_id: t.track_id, state: t.state, name: t.name ?? null, person_id: t.person_id ?? null,
    similarity: isNum(t.similarity) ? Number(t.similarity.toFixed(3)) : null,
  })));
  canvas.dataset.frame = latest ? String(latest.data.frame ?? "") : "";
  const keep = new Set();
  if (latest && cw && ch) {
    const map = mapping(latest.data, cw, ch);
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const t of tracks) {
      if (!Array.isArray(t.bbox) || t.bbox.length !== 4) continue;
      const [x1, y1, x2, y2] = map(t.bbox);
      const colour = COLOURS[t.state] || COLOURS.pending;
      ctx.lineWidth = t.state === "pending" ? 1.5 : 2.5;
      ctx.setLineDash(t.state === "pending" ? [6, 4] : []);
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.setLineDash([]);
      const text = label(t);
      const tw = ctx.measureText(text).width + 10;
      const ty = y1 >= 20 ? y1 - 20 : y1; // above the box, or inside it at the top edge
      ctx.fillStyle = colour;
      ctx.fillRect(x1 - 1.25, ty, tw, 20);
      ctx.fillStyle = "#06121f";
      ctx.fillText(text, x1 + 4, ty + 3);
      if (t.state === "unknown" && canOperate()) {
        keep.add(t.track_id);
        place(t.track_id, x1, y2, cw, ch);
      }
    }
  }
  for (const [id, b] of buttons) if (!keep.has(id)) { b.remove(); buttons.delete(id); }
}

function place(trackId, x, y, cw, ch) {
  let b = buttons.get(trackId);
  if (!b) {
    b = make("button", "overlay-register small primary", "Register");
    b.type = "button";
    b.dataset.trackId = String(trackId);
    b.setAttribute("aria-label", `Register face #${trackId}`);
    b.addEventListener("click", () => onRegister(trackId));
    layer.append(b);
    buttons.set(trackId, b);
  }
  // Just below the box (inside the picture when the box reaches its bottom edge).
  const bw = b.offsetWidth || 80, bh = b.offsetHeight || 26;
  b.style.left = `${Math.max(0, Math.min(x, cw - bw))}px`;
  b.style.top = `${Math.max(0, Math.min(y + 4, ch - bh))}px`;
}
