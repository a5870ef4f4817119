// The register dialog. Two ways in:
// - "decision": the gate asks (unknown_person_detected / registration_waiting) and waits for an
//   answer, with a countdown (#decision-countdown, data-seconds). Typing a name tells the gate
//   (registration_typing, once per question), which extends the deadline. The answer is a
//   registration_decision.
// - "offer": the operator picks a face in view (the overlay's or the unknowns list's Register
//   button); the answer is POST /api/registration {track_id, name}. If the gate then asks
//   about that same face, the operator already answered: it is confirmed at once.
// The client never closes the dialog on its own while a question is open: only the operator's
// answer or the gate (registration_approved / _start / _cancelled) does.

import { api, imgUrl } from "./api.js";
import { $, feed, role, isNum, unknownPrompt } from "./ui.js";

const dlg = $("register-dialog");
const q = { mode: null, trackId: null, typed: false }; // what the open dialog is about
// The gate's open question: {trackId, deadline (ms, or null before registration_waiting), info}.
let pending = null;
let confirmOffer = null; // {trackId, name, until}: an offer just sent, to confirm if asked
const replies = []; // what each decision_result answers, in order: "typing" | "decision"
let ctx = { send: () => false, showResult: () => {} };

export function initRegister({ send, showResult }) {
  ctx = { send, showResult };
  $("register-form").addEventListener("submit", (e) => { e.preventDefault(); answer(true); });
  $("register-no").addEventListener("click", () => answer(false));
  dlg.addEventListener("cancel", (e) => { e.preventDefault(); answer(false); }); // Escape = Not now
  $("register-name").addEventListener("input", () => {
    if (q.mode !== "decision" || q.typed || !$("register-name").value) return;
    q.typed = true; // once per question
    if (ctx.send("registration_typing", {})) replies.push("typing");
  });
  setInterval(tick, 250);
}

export const decisionPendingFor = (trackId) => !!pending && (pending.trackId == null || pending.trackId === trackId);

/** unknown_person_detected: the gate may ask about this face. */
export function onUnknown(d) {
  if (d.show_registration_dialog === false) return;
  const same = pending && pending.trackId === (d.track_id ?? null);
  pending = { trackId: d.track_id ?? null, deadline: same ? pending.deadline : null, extended: same && pending.extended, info: d, told: same && pending.told };
  ask();
}

/** registration_waiting: the question's countdown (again when it was extended). */
export function onWaiting(d) {
  const secs = isNum(d.seconds_left) ? d.seconds_left : d.timeout_seconds;
  const same = pending && pending.trackId === (d.track_id ?? null);
  pending = {
    trackId: d.track_id ?? null, deadline: isNum(secs) ? Date.now() + secs * 1000 : null,
    extended: !!d.extended, info: same ? pending.info : { message: d.message }, told: same && pending.told,
  };
  ask();
}

/** The gate started (or approved) a registration: any open question is over. */
export function onRegistrationBegins() {
  pending = null;
  confirmOffer = null;
  close();
}

/** registration_cancelled / _failed: the question (or capture) about this face is over. */
export function onRegistrationEnds(d, { cancelled }) {
  const mine = d.track_id == null || q.trackId == null || d.track_id === q.trackId;
  pending = null;
  if (cancelled && dlg.open && (q.mode === "decision" || mine)) close();
}

/** /system_status after a (re)connection: is the gate waiting for an answer? */
export function onStatus(s) {
  if (s.waiting_for_user_response) {
    if (!pending) {
      pending = { trackId: null, deadline: null, info: {} };
      recoverQuestion(pending);
    }
    ask();
  } else if (pending) {
    pending = null;
    if (dlg.open && q.mode === "decision") {
      // Keep what the operator typed: Register now offers the face again instead.
      if ($("register-name").value.trim() && q.trackId != null) setMode("offer", q.trackId);
      else close();
    }
  }
}

/** A Register button (overlay, unknowns list): ask about this face. */
export function offerTrack(trackId, info = {}) {
  if (role() === "viewer") return;
  if (decisionPendingFor(trackId)) { ask(); return; }
  const fresh = !dlg.open;
  setMode("offer", trackId);
  fill(info, "They will be asked to turn their head through a few poses in front of the camera.");
  if (fresh) show();
}

// ---------------------------------------------------------------- internals
/** Connected while the gate was already asking: which face, and the time left, from the history. */
async function recoverQuestion(p) {
  let rows;
  try {
    rows = await api("/api/events?limit=3&before=9223372036854775807&type=unknown_person_detected,registration_waiting");
  } catch { return; }
  if (pending !== p || !Array.isArray(rows)) return; // the live events told more meanwhile
  const waiting = rows.find((r) => r.type === "registration_waiting");
  const unknown = rows.find((r) => r.type === "unknown_person_detected");
  if (!waiting) return;
  const w = waiting.data;
  const deadline = Date.parse(w.timestamp) + (isNum(w.seconds_left) ? w.seconds_left : 0) * 1000;
  if (!(deadline > Date.now())) return;
  p.trackId = w.track_id ?? null;
  p.deadline = deadline;
  p.extended = !!w.extended;
  if (unknown && (unknown.data.track_id ?? null) === p.trackId) p.info = unknown.data;
  ask();
}

function ask() {
  if (!pending) return;
  const info = pending.info || {};
  if (confirmOffer && Date.now() < confirmOffer.until && confirmOffer.trackId === pending.trackId) {
    const { name } = confirmOffer; // the operator chose this face a moment ago: say yes
    confirmOffer = null;
    send(true, name);
    return;
  }
  if (role() === "viewer") { // only an operator may answer; a viewer sees it in the feed
    if (!pending.told) feed("An unknown person is waiting for an operator's decision", "decision");
    pending.told = true;
    return;
  }
  if (dlg.open && q.mode === "offer" && q.trackId !== pending.trackId && $("register-name").value.trim()) {
    feed(`Face #${pending.trackId} is waiting for a decision (finish the open one first)`, "decision");
    return; // do not take over a name being typed for another face
  }
  const fresh = !dlg.open || q.mode !== "decision" || q.trackId !== pending.trackId;
  setMode("decision", pending.trackId);
  if (fresh) q.typed = false;
  fill(info, "An unknown person is in front of the camera. Register them?");
  if (!dlg.open) show();
  tick();
}

function setMode(mode, trackId) {
  q.mode = mode;
  q.trackId = trackId;
  dlg.dataset.mode = mode;
  dlg.dataset.trackId = trackId == null ? "" : String(trackId);
  $("register-title").textContent = mode === "decision" ? "Unknown person — register?" : `Register face #${trackId}?`;
  tick();
}

function fill(info, text) {
  // The gate's own message is not shown: it may already carry its reason; this line and the
  // next say it once, in the panel's words.
  $("register-msg").textContent = text;
  $("register-why").textContent = unknownPrompt(info);
}

function show() {
  $("register-name").value = "";
  const snap = $("register-snap");
  snap.hidden = true;
  snap.onload = () => { snap.hidden = false; };
  snap.onerror = () => { snap.hidden = true; };
  snap.src = imgUrl("/snapshot.jpg", true);
  dlg.showModal();
  $("register-name").focus();
}

function close() {
  if (dlg.open) dlg.close();
  q.mode = null;
  q.trackId = null;
  delete dlg.dataset.mode;
  tick();
}

function tick() {
  const el = $("decision-countdown");
  const deadline = q.mode === "decision" && pending ? pending.deadline : null;
  if (deadline == null) {
    el.hidden = true;
    el.dataset.seconds = "";
    return;
  }
  const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
  el.hidden = false;
  el.dataset.seconds = String(left);
  el.dataset.extended = String(!!pending.extended);
  el.classList.toggle("urgent", left <= 5);
  el.textContent = left > 0 ? `answer within ${left} s` + (pending.extended ? " (extended)" : "") : "time is up — waiting for the gate…";
}

function answer(register) {
  const name = $("register-name").value.trim();
  const { mode, trackId } = q;
  close();
  if (mode === "decision") send(register, name);
  else if (mode === "offer" && register) offer(trackId, name);
}

function send(register, name) {
  const data = register && name ? { register, name } : { register };
  pending = null;
  if (ctx.send("registration_decision", data)) replies.push("decision");
  else { // socket down: use HTTP instead
    api("/registration_decision", { method: "POST", body: data })
      .then(showDecision, (e) => showDecision({ ok: false, message: e.message }));
  }
  feed(register ? `You chose to register${name ? ` “${name}”` : ""}` : "You chose not to register", "decision");
}

async function offer(trackId, name) {
  feed(`You offered face #${trackId} for registration${name ? ` as “${name}”` : ""}`, "decision");
  confirmOffer = { trackId, name, until: Date.now() + 10000 };
  try {
    const r = await api("/api/registration", { method: "POST", body: { track_id: trackId, name: name || null } });
    if (r && r.message) feed(r.message, "reg");
  } catch (e) {
    confirmOffer = null;
    const why = e.status === 404 ? `face #${trackId} is no longer in view` : e.message;
    ctx.showResult(`Could not register face #${trackId}: ${why}`, "failure");
    feed(`Could not register face #${trackId}: ${e.message}`, "error");
  }
}

/** The socket closed: replies to what was sent on it will not come. */
export function onSocketClosed() { replies.length = 0; }

/** decision_result: the answer to a registration_decision or a registration_typing. */
export function onDecisionResult(d) {
  if (replies.shift() === "typing") return; // the extension is shown by registration_waiting
  showDecision(d);
}

function showDecision(d) {
  if (d && d.ok === false) {
    ctx.showResult(`Decision not accepted: ${d.message || "unknown error"}`, "failure");
    feed(`Decision not accepted: ${d.message || ""}`, "error", d.timestamp);
  }
}
