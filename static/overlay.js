// The face boxes over the live video, drawn in the browser from the `tracks` messages (the
// video itself is the camera's plain picture).
//
// The picture and the messages travel separately (video.js reads the MJPEG stream, the socket
// brings the messages), so the boxes are drawn for the picture SHOWN, never simply the latest
// message: the view of exactly that frame when it has come, else the latest view of the same
// scene from before that frame and at most MAX_LAG seconds of stream time older; otherwise no
// boxes. After a camera cut the previous scene's boxes are never drawn on the new picture, and
// on moving faces the boxes trail the picture by at most MAX_LAG. It is redrawn whenever a
// picture is shown and whenever a message comes (a view may come just after its picture).
//
// The canvas covers the <img> exactly; the image is shown with object-fit: contain, so the
// frame's pixels are scaled by one factor and centred (letterboxed). Nothing is drawn while
// the camera is not connected, nor on a picture that does not say which frame it is.
//
// A face under the liveness challenge (its view's `liveness`) gets a note under its box, in
// the notes layer (text in the DOM, never drawn from data as HTML): "asked" shows the
// instruction with the live hint (liveness_pose_feedback) and the seconds left, "waiting" that
// its check comes next, "passed" / "failed" the verdict and what the door does (reason and
// access from liveness_result). A box whose access is not granted is never drawn in the
// "known" green: checking (waiting, asked) has its own colour and failed is red.
//
// For tests (and anyone curious) the canvas carries what it shows: data-tracks (JSON list of
// {track_id, state, name, person_id, similarity, liveness, colour}), data-frame, data-drawn-time and
// data-drawn-scene (the drawn view's frame, frame_time and scene; "" when no boxes), and
// data-shown-frame, data-shown-time and data-shown-scene (the picture shown; "" when unknown).

import { make, sim, isNum, canOperate, livenessReason } from "./ui.js";

const MAX_LAG = 0.25; // s of stream time a view may be older than the picture it is drawn on
const VIEWS_KEPT = 64;
const COLOURS = { known: "#35c46a", unknown: "#f0b429", pending: "#8c99a6", registering: "#4ea1ff" };
// Liveness overrides the state's colour: nothing but a passed check looks like a welcome.
const LIVENESS_COLOURS = { waiting: "#b48cff", asked: "#b48cff", failed: "#ef5350" };
const FEEDBACK_FRESH_MS = 2000; // a pose hint older than this is not shown
const CHALLENGES_KEPT = 32;
const NO_FRAME = { frame: null, frameTime: null, scene: null };

let canvas, img, layer, notesLayer, onRegister = () => {};
let views = []; // the latest `tracks` messages, oldest first
let shown = NO_FRAME; // the picture displayed: {frame, frameTime, scene}
let switching = null; // the picture about to replace it (see pictureSwitching)
let drawn = null; // the view drawn now
let cameraOk = true;
const buttons = new Map(); // track_id -> its Register button (kept: a click must not miss it)
const notes = new Map(); // track_id -> its liveness note
// track_id -> what the liveness events said of its challenge: {challenge, feedback, result,
// deadline (Date.now() ms when its time is up)}
const checks = new Map();
// person_id -> their latest liveness_result: a verdict stands for the person, so a new track of
// theirs may be shown as passed or failed without a result of its own.
const verdicts = new Map();

export function initOverlay({ canvasEl, imgEl, buttonLayer, notesEl, register }) {
  canvas = canvasEl;
  img = imgEl;
  layer = buttonLayer;
  notesLayer = notesEl;
  onRegister = register;
  canvas.dataset.tracks = "[]";
  canvas.dataset.frame = "";
  new ResizeObserver(() => draw()).observe(canvas);
  setInterval(tickNotes, 250);
}

// ---------------------------------------------------------------- liveness events
function checkOf(trackId) {
  let c = checks.get(trackId);
  if (!c) {
    c = { challenge: null, feedback: null, result: null, deadline: null };
    checks.set(trackId, c);
    while (checks.size > CHALLENGES_KEPT) checks.delete(checks.keys().next().value);
  }
  return c;
}

/** liveness_challenge: the face is asked to turn its head. */
export function onLivenessChallenge(d) {
  if (!d || d.track_id == null) return;
  const c = checkOf(d.track_id);
  Object.assign(c, { challenge: d, feedback: null, result: null, deadline: null });
  if (isNum(d.timeout_seconds)) c.deadline = Date.now() + d.timeout_seconds * 1000;
  draw();
}

/** liveness_pose_feedback: the challenged face's pose, a few times a second. */
export function onLivenessFeedback(d) {
  if (!d || d.track_id == null) return;
  const c = checkOf(d.track_id);
  c.feedback = { ...d, at: Date.now() };
  if (isNum(d.seconds_left)) c.deadline = Date.now() + d.seconds_left * 1000;
  draw();
}

/** liveness_result: how the challenge ended. */
export function onLivenessResult(d) {
  if (!d || d.track_id == null) return;
  const c = checkOf(d.track_id);
  Object.assign(c, { result: d, feedback: null, deadline: null });
  if (d.person_id) {
    verdicts.delete(d.person_id);
    verdicts.set(d.person_id, d);
    while (verdicts.size > CHALLENGES_KEPT) verdicts.delete(verdicts.keys().next().value);
  }
  draw();
}

const secondsLeft = (c) => (c && c.deadline != null ? Math.max(0, Math.ceil((c.deadline - Date.now()) / 1000)) : null);

/** What the note under a face says: {main, detail, kind}, or null for none. */
function noteOf(t) {
  const c = checks.get(t.track_id);
  const verdict = c?.result ?? (t.person_id ? verdicts.get(t.person_id) : null);
  switch (t.liveness) {
    case "asked": {
      const main = t.instruction || c?.challenge?.instruction || "Turn your head as asked, then back";
      const fb = c?.feedback;
      const hint = fb && Date.now() - fb.at <= FEEDBACK_FRESH_MS ? fb.hint || (fb.phase === "return" ? "now back to the front" : "") : "";
      return { main, hint, kind: "asked" };
    }
    case "waiting": return { main: "liveness check next", kind: "waiting" };
    case "passed": {
      const access = verdict?.access ?? (t.state === "known" ? "granted" : null);
      const main = "Live ✓" + (access === "granted" ? " — access granted" : access === "denied" ? " — access denied" : "");
      return { main, kind: access === "denied" ? "denied" : "passed" };
    }
    case "failed":
      return { main: "Not live ✗ — access denied", detail: verdict ? livenessReason(verdict.reason) : "", kind: "failed" };
    default: return null;
  }
}

/** The note's countdown, kept current between messages. */
function tickNotes() {
  for (const [id, el] of notes) {
    if (el.dataset.liveness === "asked") setLeft(el.querySelector(".ln-left"), secondsLeft(checks.get(id)));
  }
}

function setLeft(el, left) {
  el.hidden = left == null;
  el.dataset.seconds = left == null ? "" : String(left);
  el.classList.toggle("urgent", left != null && left <= 3);
  el.textContent = left == null ? "" : `${left} s left`;
}

/** A `tracks` message arrived. */
export function onTracks(data) {
  if (!cameraOk || !data || !Array.isArray(data.tracks) || !Number.isInteger(data.frame)) return;
  const view = { ...data, scene: Number.isInteger(data.scene) ? data.scene : 0 };
  views = views.filter((v) => v.frame !== view.frame);
  views.push(view);
  if (views.length > VIEWS_KEPT) views = views.slice(-VIEWS_KEPT);
  draw();
}

/** The picture of `frame` ({frame, frameTime, scene}) is about to be shown. */
export function pictureSwitching(frame) {
  switching = frame || NO_FRAME;
  // Across a cut (or to a picture that does not say which frame it is) no box may be left
  // on the new picture for even one paint: clear them now, the new picture's come with it.
  if (drawn && !sameScene(switching, shown)) draw();
}

/** The picture of `frame` is displayed now. */
export function pictureShown(frame) {
  shown = frame || NO_FRAME;
  switching = null;
  draw();
}

/** The camera (source or MJPEG stream) is up or down; down clears the overlay. */
export function setCameraOk(ok) {
  cameraOk = !!ok;
  if (!cameraOk) clearOverlay();
}

/** Forget every view (they may belong to a stream that is gone) and draw no box. */
export function clearOverlay() {
  views = [];
  draw();
}

const sameScene = (a, b) => isNum(a.frame) && isNum(b.frame) && a.scene === b.scene;

/** The view to draw on the picture shown, or null. */
function viewFor(pic) {
  if (!cameraOk || !Number.isInteger(pic.frame)) return null;
  if (switching && !sameScene(switching, pic)) return null;
  let best = null;
  for (const v of views) {
    if (v.scene !== (pic.scene ?? 0) || v.frame > pic.frame) continue;
    if (v.frame === pic.frame) return v; // the faces of that very picture
    if (!best || v.frame > best.frame) best = v;
  }
  if (!best || !isNum(pic.frameTime) || !isNum(best.frame_time)) return null;
  const lag = pic.frameTime - best.frame_time;
  return lag >= 0 && lag <= MAX_LAG ? best : null;
}

/** The face drawn now, else its latest view (for the register dialog: its similarity). */
export function currentTrack(id) {
  for (const v of [drawn, ...views.slice().reverse()]) {
    const found = v?.tracks.find((t) => t.track_id === id);
    if (found) return found;
  }
  return null;
}

function label(t) {
  const id = `#${t.track_id}`;
  switch (t.state) {
    case "known": return `${id} ${t.name || t.person_id || "known"}` + (isNum(t.similarity) ? ` ${sim(t.similarity)}` : "");
    case "unknown": return `${id} unknown`;
    case "registering": return `${id} registering`;
    default: return `${id} …`;
  }
}

/** `text` cut with "…" to fit `max` pixels (a long name must not cover the next face's label). */
function fit(ctx, text, max) {
  if (ctx.measureText(text).width <= max) return text;
  const chars = [...text];
  while (chars.length > 1 && ctx.measureText(chars.join("") + "…").width > max) chars.pop();
  return chars.join("") + "…";
}

const colourOf = (t) => (t.state !== "registering" && LIVENESS_COLOURS[t.liveness]) || COLOURS[t.state] || COLOURS.pending;

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
  const view = viewFor(shown);
  drawn = view && view.tracks.length ? view : null;
  const tracks = drawn ? drawn.tracks : [];
  canvas.dataset.tracks = JSON.stringify(tracks.map((t) => ({
    track_id: t.track_id, state: t.state, name: t.name ?? null, person_id: t.person_id ?? null,
    similarity: isNum(t.similarity) ? Number(t.similarity.toFixed(3)) : null,
    liveness: t.liveness ?? null, colour: colourOf(t),
  })));
  const field = (v) => (isNum(v) ? String(v) : "");
  canvas.dataset.frame = field(drawn?.frame);
  canvas.dataset.drawnTime = field(drawn?.frame_time);
  canvas.dataset.drawnScene = field(drawn?.scene);
  canvas.dataset.shownFrame = field(shown.frame);
  canvas.dataset.shownTime = field(shown.frameTime);
  canvas.dataset.shownScene = field(shown.scene);
  const keep = new Set(), keepNotes = new Set();
  if (drawn && cw && ch) {
    const map = mapping(drawn, cw, ch);
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const t of tracks) {
      if (!Array.isArray(t.bbox) || t.bbox.length !== 4) continue;
      const [x1, y1, x2, y2] = map(t.bbox);
      const colour = colourOf(t);
      ctx.lineWidth = t.state === "pending" ? 1.5 : 2.5;
      ctx.setLineDash(t.state === "pending" ? [6, 4] : []);
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.setLineDash([]);
      const text = fit(ctx, label(t), Math.max(x2 - x1, 110) - 10);
      const tw = ctx.measureText(text).width + 10;
      const ty = y1 >= 20 ? y1 - 20 : y1; // above the box, or inside it at the top edge
      ctx.fillStyle = colour;
      ctx.fillRect(x1 - 1.25, ty, tw, 20);
      ctx.fillStyle = "#06121f";
      ctx.fillText(text, x1 + 4, ty + 3);
      let below = y2;
      const note = noteOf(t);
      if (note && notesLayer) {
        keepNotes.add(t.track_id);
        below = placeNote(t, note, x1, y2, x2 - x1, cw, ch);
      }
      if (t.state === "unknown" && canOperate()) {
        keep.add(t.track_id);
        place(t.track_id, x1, below, cw, ch);
      }
    }
  }
  for (const [id, b] of buttons) if (!keep.has(id)) { b.remove(); buttons.delete(id); }
  for (const [id, n] of notes) if (!keepNotes.has(id)) { n.remove(); notes.delete(id); }
}

/** The liveness note of face `t` just below its box (inside the picture when the box reaches
 *  its bottom edge); the y under the note. Every text is set as text. */
function placeNote(t, note, x, y, boxWidth, cw, ch) {
  let n = notes.get(t.track_id);
  if (!n) {
    n = make("div", "liveness-note");
    n.dataset.trackId = String(t.track_id);
    n.append(make("strong", "ln-main"), make("span", "ln-hint"), make("span", "ln-left"), make("span", "ln-detail"));
    notesLayer.append(n);
    notes.set(t.track_id, n);
  }
  n.dataset.liveness = t.liveness;
  n.dataset.kind = note.kind;
  const set = (cls, text) => {
    const el = n.querySelector(`.${cls}`);
    if (el.textContent !== text) el.textContent = text;
    el.hidden = !text;
  };
  set("ln-main", note.main);
  set("ln-hint", note.hint || "");
  set("ln-detail", note.detail || "");
  setLeft(n.querySelector(".ln-left"), t.liveness === "asked" ? secondsLeft(checks.get(t.track_id)) : null);
  n.style.minWidth = `${Math.max(0, Math.min(boxWidth, cw))}px`;
  const nw = n.offsetWidth || 160, nh = n.offsetHeight || 40;
  const top = Math.max(0, Math.min(y + 4, ch - nh));
  n.style.left = `${Math.max(0, Math.min(x, cw - nw))}px`;
  n.style.top = `${top}px`;
  return top + nh;
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
