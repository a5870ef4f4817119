// facegate operator panel: live video with the faces drawn over it, event feed, registration
// flow, recent unknown faces, gallery and person detail, event history, stats.
import { api, connectSocket } from "./api.js";
import { initGauge } from "./gauge.js";
import { initGallery, refreshGallery, onPersons, confirmDelete } from "./gallery.js";
import { $, make, feed, describe, role, setThisGate, atOtherGate } from "./ui.js";
import {
  initOverlay, onTracks, setCameraOk, currentTrack, pictureSwitching, pictureShown,
  onLivenessChallenge, onLivenessFeedback, onLivenessResult,
} from "./overlay.js";
import { initVideo } from "./video.js";
import * as register from "./register.js";
import * as capture from "./capture.js";
import { initUnknowns, refreshUnknowns } from "./unknowns.js";
import { initPerson, openPerson } from "./person.js";
import { initHistory, setHistoryPersons, historyNoticed, reload as reloadHistory, refreshGates } from "./history.js";
import { initStats } from "./stats.js";

const setPresence = (text) => { $("presence").textContent = text; };
const logEvent = (type, d) => { const [text, kind] = describe(type, d); feed(text + atOtherGate(d.gate_id), kind, d.timestamp); };

// ---------------------------------------------------------------- camera / video
// #camera-status is the one place that says the camera is unavailable (the server's video
// is then a blank frame); the overlay is cleared whenever the picture is not live. The video
// is read by video.js, which says which frame each picture shown is (the overlay draws the
// boxes of that picture).
const cam = { state: "connected", message: "", retry: null, streamOk: true, told: 0 };
let videoRetry = null;
const video = initVideo({
  img: $("video"),
  path: "/video.mjpg",
  onSwitch: pictureSwitching,
  onFrame: pictureShown,
  onLive() { if (!cam.streamOk) { cam.streamOk = true; renderCamera(); } },
  onError() {
    cam.streamOk = false;
    renderCamera();
    clearTimeout(videoRetry);
    videoRetry = setTimeout(restartVideo, 3000);
  },
});

/** (Re)open the video stream: any open one is aborted. */
function restartVideo() {
  clearTimeout(videoRetry);
  video.restart();
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
  setCameraOk(!title && online);
}
/** The source's state learnt other than by source_status (on connect, from the stats). */
function syncSource(state, { polled = false } = {}) {
  if (!state || state === cam.state) return;
  if (polled && Date.now() - cam.told < 4000) return; // a poll may predate the latest event
  Object.assign(cam, { state, message: "", retry: null });
  if (state === "connected") { cam.streamOk = true; restartVideo(); }
  renderCamera();
}

// ---------------------------------------------------------------- Register buttons
/** A Register button (overlay, unknowns list) was clicked for this face. */
function registerTrack(trackId) {
  const t = currentTrack(trackId);
  register.offerTrack(trackId, t && t.state === "unknown" ? { similarity: t.similarity, threshold: lastThreshold } : {});
}
let lastThreshold;

// ---------------------------------------------------------------- message dispatch
function afterRegistration(d, { cancelled }) {
  register.onRegistrationEnds(d, { cancelled });
  capture.endCapture();
  refreshGallery();
  refreshUnknowns();
}

/** The header says who is in view now, from the faces of the latest frame (departures come
 *  from person_left_area: a face missed for a frame or two has not left). */
function presenceFromTracks(tracks) {
  if (!Array.isArray(tracks) || !tracks.length) return;
  const known = tracks.filter((t) => t.state === "known" && t.name);
  const names = [...new Set(known.map((t) => t.name))];
  const others = tracks.length - known.length;
  if (names.length) {
    const who = names.length === 1 ? names[0] : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
    // Recognized is not welcome: while the liveness check runs, or after it failed, say so.
    const live = known.some((t) => t.liveness === "asked" || t.liveness === "waiting") ? " — checking liveness…"
      : known.some((t) => t.liveness === "failed") ? " — not live, access denied"
        : known.some((t) => t.liveness === "passed") ? " — live, access granted" : "";
    setPresence(`${who} recognized${live}` + (others ? ` (+${others} not identified)` : ""));
  } else if (tracks.some((t) => t.state === "registering")) {
    setPresence("Registering a new person");
  } else if (tracks.some((t) => t.state === "unknown")) {
    setPresence(tracks.length === 1 ? "Unknown person" : `${tracks.length} faces in view, none recognized`);
  } else {
    setPresence(tracks.length === 1 ? "Someone is in view" : `${tracks.length} faces in view`);
  }
}

const handlers = {
  connected(d) {
    const gateChanged = setGate(d.gate_id);
    feed(d.message || "Connected", "system", d.timestamp);
    if (gateChanged) { refreshGates(); reloadHistory(); } // rows of this gate are marked as such
    setRole(d.role || "admin");
    const apply = (s) => {
      if (!s) return;
      syncSource(s.source_state);
      register.onStatus(s);
      capture.applyCaptureStatus(s);
      if (s.person_in_detection_area === false) setPresence("Waiting for a person…");
      else if (s.person_in_detection_area && $("presence").textContent === "Waiting for a person…") setPresence("Someone is in view");
    };
    if (d.status) apply(d.status);
    else api("/system_status").then(apply, () => {});
  },
  tracks(d) {
    if (typeof d.threshold === "number") lastThreshold = d.threshold;
    onTracks(d);
    presenceFromTracks(d.tracks);
  },
  person_recognized(d) {
    logEvent("person_recognized", d);
    setPresence(`${d.name} recognized` + (d.access === "pending" ? " — checking liveness…" : ""));
    refreshUnknowns(); // a stranger who was just registered is one no more
  },
  unknown_person_detected(d) {
    logEvent("unknown_person_detected", d);
    setPresence("Unknown person");
    register.onUnknown(d);
    refreshUnknowns();
  },
  person_left_area(d) {
    logEvent("person_left_area", d);
    if (d.name) setPresence(`${d.name} left the area`);
    else if (d.show_waiting_message !== false) setPresence("Waiting for a person…");
    refreshUnknowns();
  },
  liveness_challenge(d) {
    onLivenessChallenge(d);
    logEvent("liveness_challenge", d);
  },
  liveness_pose_feedback: (d) => onLivenessFeedback(d),
  liveness_result(d) {
    onLivenessResult(d);
    logEvent("liveness_result", d);
    const who = d.name || (d.track_id != null ? `Face #${d.track_id}` : "The face");
    setPresence(d.passed ? `${who}: live — access ${d.access === "granted" ? "granted" : "denied"}` : `${who}: not live — access denied`);
  },
  source_status(d) {
    const changed = d.state !== cam.state;
    Object.assign(cam, { state: d.state, message: d.message || "", retry: d.retry_in_seconds, told: Date.now() });
    if (d.state === "connected") { cam.streamOk = true; if (changed) restartVideo(); }
    renderCamera();
    if (changed) logEvent("source_status", d);
  },
  registration_waiting(d) {
    register.onWaiting(d);
    if (d.extended) feed(`The decision deadline was extended: ${Math.round(d.seconds_left)} s`, "decision", d.timestamp);
  },
  registration_approved(d) {
    register.onRegistrationBegins();
    capture.showResult("");
    logEvent("registration_approved", d);
    capture.setInstruction(`Get ready${d.name ? `, ${d.name}` : ""} — capture is starting…`);
  },
  registration_start(d) {
    register.onRegistrationBegins();
    capture.onStart(d);
    logEvent("registration_start", d);
    refreshUnknowns();
  },
  registration_angle_instruction: (d) => capture.onInstruction(d),
  registration_pose_feedback: (d) => capture.onFeedback(d),
  registration_angle_complete(d) {
    capture.onAngleComplete(d);
    logEvent("registration_angle_complete", d);
  },
  registration_complete(d) {
    capture.onComplete();
    capture.showResult(`✓ ${d.message || `Registered ${d.name}`}`, "success");
    logEvent("registration_complete", d);
    refreshGallery();
    refreshUnknowns();
  },
  registration_failed(d) {
    afterRegistration(d, { cancelled: false });
    const [text] = describe("registration_failed", d);
    capture.showResult(`✗ ${text}.`, "failure", d.next_step);
    logEvent("registration_failed", d);
  },
  registration_cancelled(d) {
    afterRegistration(d, { cancelled: true });
    const [text] = describe("registration_cancelled", d);
    capture.showResult(`${text}.`, "cancelled", d.next_step);
    logEvent("registration_cancelled", d);
  },
  system_ready: (d) => logEvent("system_ready", d),
  decision_result: (d) => register.onDecisionResult(d),
  pong() {},
  error: (d) => feed(`Server error: ${d.message || "unknown"}`, "error", d.timestamp),
};

// ---------------------------------------------------------------- this gate
/** The gate this panel is connected to (its `gate.id`), shown in the top bar. */
function setGate(id) {
  const name = typeof id === "string" ? id : "";
  const el = $("gate-name");
  const changed = el.textContent !== name;
  setThisGate(name);
  el.textContent = name;
  el.hidden = !name;
  return changed;
}

// ---------------------------------------------------------------- role
/** The role the server gave this page's token: the panel shows only what it may do. */
function setRole(r) {
  const changed = role() !== r;
  document.body.dataset.role = r;
  if (changed) { refreshGallery(); refreshUnknowns(); reloadHistory(); }
}

// ---------------------------------------------------------------- connection
let online = false, connectedOnce = false;
function setOnline(up) {
  online = up;
  const c = $("connection");
  c.textContent = up ? "online" : "offline — reconnecting";
  c.className = `pill ${up ? "online" : "offline"}`;
  c.dataset.state = up ? "online" : "offline";
  renderCamera(); // the overlay's data is live only while connected
  if (!up) { register.onSocketClosed(); return; }
  refreshGallery(); // (re)connected: the gallery may have changed meanwhile
  refreshUnknowns();
  refreshGates();
  reloadHistory();
  if (connectedOnce) restartVideo(); // the server restarted: the old MJPEG stream is dead
  connectedOnce = true;
}
const sock = connectSocket({
  onMessage(type, data) {
    const h = handlers[type];
    if (h) { try { h(data); } catch (e) { console.error(`handling ${type}`, e); } }
    historyNoticed(type);
  },
  onState: setOnline,
});

$("reset").addEventListener("click", () => {
  if (!sock.send("reset_system", {})) api("/reset_system", { method: "POST", body: {} }).catch((e) => feed(`Reset failed: ${e.message}`, "error"));
  feed("Reset requested", "decision");
});

// ---------------------------------------------------------------- start
initGauge($("pose-gauge"));
capture.initCapture();
register.initRegister({ send: (type, data) => sock.send(type, data), showResult: capture.showResult });
initOverlay({ canvasEl: $("overlay"), imgEl: $("video"), buttonLayer: $("overlay-buttons"), notesEl: $("overlay-notes"), register: registerTrack });
initGallery((text, kind = "system") => feed(text, kind), (p) => openPerson(p));
onPersons(setHistoryPersons);
initPerson({ changed: () => refreshGallery(), confirmErase: confirmDelete });
initUnknowns({ register: registerTrack });
initHistory();
initStats({ personsChanged: () => refreshGallery(), source: (src) => syncSource(src.state, { polled: true }) });
renderCamera();
restartVideo();
refreshGallery();
