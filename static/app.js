// facegate operator panel: live video, event feed, registration flow, gallery, stats.
import { api, imgUrl, connectSocket } from "./api.js";
import { initGauge, updateGauge } from "./gauge.js";
import { initGallery, refreshGallery } from "./gallery.js";

const $ = (id) => document.getElementById(id);
const FEED_MAX = 100;
const DEFAULT_ANGLES = ["front", "left", "right", "up", "down"];
const dlg = $("register-dialog");

// ---------------------------------------------------------------- event feed
const make = (tag, cls, text) => Object.assign(document.createElement(tag), cls ? { className: cls } : {}, text != null ? { textContent: text } : {});

function feed(text, kind = "info", ts) {
  let d = new Date(ts || Date.now());
  if (isNaN(d)) d = new Date();
  const t = make("time", "", d.toLocaleTimeString([], { hour12: false }));
  t.dateTime = d.toISOString();
  const li = make("li", `ev ${kind}`);
  li.append(t, make("span", "", text));
  $("feed").prepend(li);
  while ($("feed").children.length > FEED_MAX) $("feed").lastElementChild.remove();
}
const pct = (v) => (typeof v === "number" ? `${Math.round(v * 100)}%` : "?");
const setPresence = (text) => { $("presence").textContent = text; };

// ---------------------------------------------------------------- camera / video
// The overlay shows the source's state (from source_status) or a broken MJPEG stream.
const cam = { state: "connected", message: "", retry: null, streamOk: true };
let videoRetry = null;

function restartVideo() {
  clearTimeout(videoRetry);
  $("video").src = imgUrl("/video.mjpg", true);
}
function renderCamera() {
  const el = $("camera-status");
  el.dataset.state = cam.state === "connected" && !cam.streamOk ? "stream-lost" : cam.state;
  let title = "", detail = "";
  if (cam.state === "unavailable") {
    title = "Camera unavailable — retrying";
    detail = (cam.retry ? `next attempt in ${Math.round(cam.retry)} s. ` : "") + (cam.message || "");
  } else if (cam.state === "ended") {
    title = "Video source ended";
    detail = cam.message || "";
  } else if (!cam.streamOk) {
    title = "Video stream interrupted — reconnecting";
  }
  el.hidden = !title;
  el.replaceChildren(make("strong", "", title), make("small", "", detail));
}
$("video").addEventListener("load", () => { if (!cam.streamOk) { cam.streamOk = true; renderCamera(); } });
$("video").addEventListener("error", () => {
  cam.streamOk = false;
  renderCamera();
  clearTimeout(videoRetry);
  videoRetry = setTimeout(restartVideo, 3000);
});

// ---------------------------------------------------------------- registration panel
const reg = { angles: DEFAULT_ANGLES, done: new Set(), current: null };

// One labelled segment per pose: .done when captured, .current for the pose being asked for.
function renderProgress(percent) {
  const bar = $("progress");
  const p = Math.max(0, Math.min(100, Math.round(Number(percent) || 0)));
  bar.dataset.progress = String(p);
  bar.setAttribute("aria-valuenow", String(p));
  bar.setAttribute("aria-valuetext", `${p}%` + (reg.current ? `, pose ${reg.current}` : ""));
  if ([...bar.children].map((c) => c.dataset.angle).join() !== reg.angles.join()) {
    bar.replaceChildren(...reg.angles.map((a) => { const seg = make("div", "seg", a); seg.dataset.angle = a; return seg; }));
  }
  for (const seg of bar.children) {
    seg.classList.toggle("done", reg.done.has(seg.dataset.angle));
    seg.classList.toggle("current", seg.dataset.angle === reg.current);
    if (seg.dataset.angle !== reg.current) seg.style.removeProperty("--fill");
  }
}
function setCurrent(angle) {
  reg.current = angle;
  // Poses are captured in order, so every angle before the current one is done.
  const i = reg.angles.indexOf(angle);
  reg.angles.slice(0, Math.max(0, i)).forEach((a) => reg.done.add(a));
}
function beginCapture(angles) {
  reg.angles = Array.isArray(angles) && angles.length ? angles : DEFAULT_ANGLES;
  reg.done = new Set();
  reg.current = null;
  $("registration").dataset.state = "active";
  showResult("");
}
function endCapture() { // back to idle; the progress bar keeps showing how far it got
  reg.current = null;
  $("registration").dataset.state = "idle";
  $("instruction").textContent = "No registration in progress.";
  $("pose-readout").textContent = "yaw –, pitch –";
  $("pose-captured").textContent = "";
  updateGauge(null);
  renderProgress($("progress").dataset.progress);
}
function showResult(text, kind = "") {
  $("result").textContent = text;
  $("result").className = `result ${kind}`;
}

const REASON_WORDS = {
  inconsistent_identity: "the captured poses did not all look like the same person",
  already_registered: "this person is already registered",
  declined: "the operator chose not to register",
  decision_timeout: "nobody answered in time",
  person_left: "the person left before it finished",
  reset: "the gate was reset",
};
function reasonWords(reason, d) {
  const r = String(reason || "");
  if (r.startsWith("angle_timeout_")) return `timed out waiting for the “${r.slice(14)}” pose`;
  if (r === "already_registered" && d && d.name) return `this person is already registered as ${d.name}`;
  return REASON_WORDS[r] || r.replace(/_/g, " ") || "unknown reason";
}

// ---------------------------------------------------------------- registration dialog
function openDialog(d) {
  if (role() === "viewer") { // only an operator may answer; a viewer sees it in the feed
    feed("An unknown person is waiting for an operator's decision", "decision");
    return;
  }
  $("register-msg").textContent = d.message || "An unknown person is in front of the camera.";
  if (typeof d.distance === "number") $("register-msg").textContent += ` (closest match distance ${d.distance.toFixed(2)})`;
  if (dlg.open) return;
  $("register-name").value = "";
  const snap = $("register-snap");
  snap.hidden = true;
  snap.onload = () => { snap.hidden = false; };
  snap.onerror = () => { snap.hidden = true; };
  snap.src = imgUrl("/snapshot.jpg", true);
  dlg.showModal();
  $("register-name").focus();
}
function closeDialog() { if (dlg.open) dlg.close(); }
function decide(register) {
  const name = $("register-name").value.trim();
  const data = register && name ? { register, name } : { register };
  closeDialog();
  if (!sock.send("registration_decision", data)) { // socket down: use HTTP instead
    api("/registration_decision", { method: "POST", body: data })
      .then(onDecisionResult, (e) => onDecisionResult({ ok: false, message: e.message }));
  }
  feed(register ? `You chose to register${name ? ` “${name}”` : ""}` : "You chose not to register", "decision");
}
function onDecisionResult(d) {
  if (d && d.ok === false) {
    showResult(`Decision not accepted: ${d.message || "unknown error"}`, "failure");
    feed(`Decision not accepted: ${d.message || ""}`, "error", d.timestamp);
  }
}
$("register-form").addEventListener("submit", (e) => { e.preventDefault(); decide(true); }); // Enter / Register
$("register-no").addEventListener("click", () => decide(false));
dlg.addEventListener("cancel", (e) => { e.preventDefault(); decide(false); }); // Escape = Not now

// ---------------------------------------------------------------- server status
function applyStatus(s) {
  if (!s) return;
  if (s.waiting_for_user_response) openDialog({ message: "An unknown person is waiting for a decision." });
  else closeDialog();
  if (s.registration_in_progress && s.current_registration_angle) {
    if ($("registration").dataset.state !== "active") beginCapture(reg.angles);
    setCurrent(s.current_registration_angle);
    $("instruction").textContent = `Capturing pose: ${s.current_registration_angle}`;
    renderProgress(s.registration_progress);
  } else if (!s.registration_in_progress && $("registration").dataset.state === "active") {
    endCapture();
  }
  if (s.person_in_detection_area === false) setPresence("Waiting for a person…");
}

// ---------------------------------------------------------------- message dispatch
const handlers = {
  connected(d) {
    feed(d.message || "Connected", "system", d.timestamp);
    setRole(d.role || "admin");
    if (d.status) applyStatus(d.status);
    else api("/system_status").then(applyStatus, () => {});
  },
  system_ready: (d) => feed(d.message || "System ready", "system", d.timestamp),
  person_recognized(d) {
    feed(`Recognized ${d.name} (${pct(d.confidence)})`, "known", d.timestamp);
    setPresence(`${d.name} recognized`);
  },
  unknown_person_detected(d) {
    feed(d.message || "Unknown person detected", "unknown", d.timestamp);
    setPresence("Unknown person");
    if (d.show_registration_dialog !== false) openDialog(d);
  },
  person_left_area(d) {
    feed(`${d.name || "Unknown person"} left the area`, "left", d.timestamp);
    if (d.show_waiting_message !== false) setPresence("Waiting for a person…");
  },
  source_status(d) {
    const changed = d.state !== cam.state;
    Object.assign(cam, { state: d.state, message: d.message || "", retry: d.retry_in_seconds });
    if (d.state === "connected") { cam.streamOk = true; if (changed) restartVideo(); }
    renderCamera();
    if (changed) feed(`Camera ${d.state}: ${d.message || d.source || ""}`, d.state === "connected" ? "system" : "error", d.timestamp);
  },
  registration_approved(d) {
    closeDialog();
    showResult("");
    feed(`Registration approved${d.name ? ` for ${d.name}` : ""}`, "reg", d.timestamp);
    $("instruction").textContent = `Get ready${d.name ? `, ${d.name}` : ""} — capture is starting…`;
  },
  registration_start(d) {
    closeDialog();
    beginCapture(d.angles);
    $("instruction").textContent = d.message || "Starting capture";
    renderProgress(0);
    feed(d.message || "Registration started", "reg", d.timestamp);
  },
  registration_angle_instruction(d) {
    if ($("registration").dataset.state !== "active") beginCapture(reg.angles);
    setCurrent(d.angle_name);
    $("instruction").textContent = d.instruction || d.message;
    renderProgress(d.progress);
    // A new pose: the last pose's readings no longer apply until fresh feedback arrives.
    $("pose-readout").textContent = "yaw –, pitch –";
    $("pose-captured").textContent = `captured 0 / ${reg.needed ?? "?"}`;
    updateGauge(null);
  },
  registration_pose_feedback(d) {
    if ($("registration").dataset.state !== "active") return;
    reg.needed = d.needed;
    updateGauge(d);
    const deg = (v) => (typeof v === "number" ? `${v.toFixed(0)}°` : "–");
    $("pose-readout").textContent = `yaw ${deg(d.yaw)}, pitch ${deg(d.pitch)}` + (d.held ? " — hold it!" : "");
    $("pose-captured").textContent = `captured ${d.captured ?? 0} / ${d.needed ?? "?"}`;
    const seg = $("progress").querySelector(`.seg[data-angle="${CSS.escape(d.angle_name || "")}"]`);
    if (seg && d.needed) seg.style.setProperty("--fill", `${Math.round((100 * (d.captured || 0)) / d.needed)}%`);
  },
  registration_angle_complete(d) {
    reg.done.add(d.angle_name);
    renderProgress(d.progress);
    feed(d.message || `Pose ${d.angle_name} captured`, "reg", d.timestamp);
  },
  registration_complete(d) {
    reg.angles.forEach((a) => reg.done.add(a));
    reg.current = null;
    renderProgress(100);
    endCapture();
    showResult(`✓ ${d.message || `Registered ${d.name}`}`, "success");
    feed(d.message || `Registered ${d.name}`, "success", d.timestamp);
    refreshGallery();
  },
  registration_failed(d) {
    endCapture();
    const why = reasonWords(d.reason, d);
    showResult(`✗ Registration failed: ${why}.`, "failure");
    feed(`Registration failed: ${why}`, "error", d.timestamp);
    refreshGallery();
  },
  registration_cancelled(d) {
    closeDialog();
    endCapture();
    const why = reasonWords(d.reason, d);
    showResult(`Registration cancelled: ${why}.`, "cancelled");
    feed(`Registration cancelled: ${why}`, "cancelled", d.timestamp);
    refreshGallery();
  },
  decision_result: onDecisionResult,
  pong() {},
  error: (d) => feed(`Server error: ${d.message || "unknown"}`, "error", d.timestamp),
};

// ---------------------------------------------------------------- role
/** The role the server gave this page's token: the panel shows only what it may do. */
const role = () => document.body.dataset.role || "admin";
function setRole(r) {
  const changed = role() !== r;
  document.body.dataset.role = r;
  if (changed) refreshGallery();
}

// ---------------------------------------------------------------- connection
function setOnline(online) {
  const c = $("connection");
  c.textContent = online ? "online" : "offline — reconnecting";
  c.className = `pill ${online ? "online" : "offline"}`;
  c.dataset.state = online ? "online" : "offline";
  if (!online) return;
  refreshGallery(); // (re)connected: the gallery may have changed meanwhile
  if (connectedOnce) restartVideo(); // the server restarted: the old MJPEG stream is dead
  connectedOnce = true;
}
let connectedOnce = false;
const sock = connectSocket({
  onMessage(type, data) {
    const h = handlers[type];
    if (h) { try { h(data); } catch (e) { console.error(`handling ${type}`, e); } }
  },
  onState: setOnline,
});

$("reset").addEventListener("click", () => {
  if (!sock.send("reset_system", {})) api("/reset_system", { method: "POST", body: {} }).catch((e) => feed(`Reset failed: ${e.message}`, "error"));
  feed("Reset requested", "decision");
});

// ---------------------------------------------------------------- stats strip
function fmtUptime(s) {
  s = Math.floor(Number(s) || 0);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${String(m).padStart(2, "0")} m`;
  return `${m} m ${String(s % 60).padStart(2, "0")} s`;
}
const fmt = (v, unit, digits = 1) => (typeof v === "number" ? `${v.toFixed(digits)} ${unit}` : "–");
let lastPersons = null;
async function pollStats() {
  try {
    const s = await api("/api/stats");
    const m = s.monitor || {};
    const set = (k, v) => { $("stats").querySelector(`[data-stat="${k}"]`).textContent = v; };
    set("capture_fps", fmt(m.capture_fps, "fps"));
    set("processed_fps", fmt(m.processed_fps, "fps"));
    set("latency_p95", m.frame_to_event && m.frame_to_event.count ? fmt(m.frame_to_event.p95_ms, "ms", 0) : "–");
    set("connections", String(s.websocket_connections ?? "–"));
    set("persons", String(s.persons ?? "–"));
    set("uptime", m.uptime_s != null ? fmtUptime(m.uptime_s) : "–");
    $("stats").classList.remove("stale");
    // Someone else (another tab, the CLI) added or erased a person: show it.
    if (lastPersons !== null && s.persons !== lastPersons) refreshGallery();
    lastPersons = s.persons;
  } catch {
    $("stats").classList.add("stale");
  }
  setTimeout(pollStats, 2000);
}

// ---------------------------------------------------------------- start
initGauge($("pose-gauge"));
initGallery((text, kind = "system") => feed(text, kind));
renderProgress(0);
renderCamera();
restartVideo();
refreshGallery();
pollStats();
