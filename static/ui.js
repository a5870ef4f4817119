// Shared by the panel's modules: DOM helpers, the event feed and the one vocabulary the
// panel uses for what the gate decided (feed lines, prompts and the event history agree).

export const $ = (id) => document.getElementById(id);

/** document.createElement with an optional class and text. */
export function make(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

/** A button that calls onClick; `label` is its accessible name when the text is not enough. */
export function button(cls, text, onClick, label) {
  const b = make("button", cls, text);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** The page's role as the server gave it ("admin" until told otherwise). */
export const role = () => document.body.dataset.role || "admin";
export const canOperate = () => role() === "operator" || role() === "admin";

// ---------------------------------------------------------------- this gate
// Several gates may share one store (persons, history); each is named by its `gate.id`.
let gateId = "";
/** This gate's id, as the server said on connect ("" until then). */
export const thisGate = () => gateId;
export function setThisGate(id) { gateId = typeof id === "string" ? id : ""; }
/** " at porch" for what another gate saw, "" for this gate's own. */
export const atOtherGate = (id) => (id && gateId && id !== gateId ? ` at ${id}` : "");

// ---------------------------------------------------------------- event feed
const FEED_MAX = 100;

export function feed(text, kind = "info", ts) {
  let d = new Date(ts || Date.now());
  if (isNaN(d)) d = new Date();
  const t = make("time", "", clock(d));
  t.dateTime = d.toISOString();
  const li = make("li", `ev ${kind}`);
  li.append(t, make("span", "", text));
  const list = $("feed");
  list.prepend(li);
  while (list.children.length > FEED_MAX) list.lastElementChild.remove();
}

export const clock = (d) => d.toLocaleTimeString([], { hour12: false });

// ---------------------------------------------------------------- numbers
/** A similarity (or threshold) as the gate compares it: two decimals, never a percentage. */
export const sim = (v) => (typeof v === "number" ? v.toFixed(2) : "?");
export const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** "12 s", "3 min 20 s", "1 h 05 min" */
export function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

// ---------------------------------------------------------------- vocabulary
/** "Recognized Ada (similarity 0.62 ≥ 0.45)" */
export function recognizedText(d) {
  const s = isNum(d.similarity) ? d.similarity : d.confidence;
  let why = isNum(s) ? `similarity ${sim(s)}` + (isNum(d.threshold) ? ` ≥ ${sim(d.threshold)}` : "") : "";
  if (d.via === "registration") why += why ? ", just registered" : "just registered";
  return `Recognized ${d.name}` + (why ? ` (${why})` : "");
}

/** Why a face was judged unknown, short: "no one enrolled yet", "closest similarity 0.21 < 0.45". */
export function unknownWhy(d) {
  if (d.similarity === null || d.enrolled === 0) return "no one enrolled yet";
  if (!isNum(d.similarity)) return "";
  if (isNum(d.threshold) && d.similarity >= d.threshold) {
    return `closest similarity ${sim(d.similarity)}, but it matches more than one person`;
  }
  return `closest similarity ${sim(d.similarity)}` + (isNum(d.threshold) ? ` < ${sim(d.threshold)}` : "");
}

/** "Unknown person (closest similarity 0.21 < 0.45)" */
export function unknownText(d) {
  const why = unknownWhy(d);
  return why ? `Unknown person (${why})` : "Unknown person";
}

/** The prompt's sentence: "No one enrolled yet." / "Closest similarity 0.21, below the threshold 0.45." */
export function unknownPrompt(d) {
  if (d.similarity === null || d.enrolled === 0) return "No one enrolled yet.";
  if (!isNum(d.similarity)) return "";
  if (isNum(d.threshold) && d.similarity >= d.threshold) {
    return `Closest similarity ${sim(d.similarity)}, but it matches more than one enrolled person.`;
  }
  return `Closest similarity ${sim(d.similarity)}` +
    (isNum(d.threshold) ? `, below the threshold ${sim(d.threshold)}.` : ".");
}

const REASON_WORDS = {
  inconsistent_identity: "the captured poses did not all look like the same person",
  already_registered: "this person is already registered",
  declined: "the operator chose not to register",
  decision_timeout: "nobody answered in time",
  person_left: "the person left before it finished",
  reset: "the gate was reset",
  not_live: "the captures moved like a photo or a screen, not a live head",
};
export function reasonWords(reason, d) {
  const r = String(reason || "");
  if (r.startsWith("angle_timeout_")) return `timed out waiting for the “${r.slice(14)}” pose`;
  if (r === "already_registered" && d && d.name) return `this person is already registered as ${d.name}`;
  return REASON_WORDS[r] || r.replace(/_/g, " ") || "unknown reason";
}

// ---------------------------------------------------------------- liveness
// The head-turn challenge (issue 15): a known face opens the door only once it turned like a
// real head; a photo or a screen cannot. The words the panel uses for its verdicts:
const LIVENESS_REASON_WORDS = {
  passed: "turned like a real head",
  planar: "moved like a photo or screen",
  timeout: "did not turn in time",
  track_lost: "face lost during the check",
  identity_changed: "another face during the check",
  left: "left before the check ended",
  no_landmarks: "not checked: the model pack has no 68-point landmarks",
};
export function livenessReason(reason) {
  const r = String(reason || "");
  return LIVENESS_REASON_WORDS[r] || r.replace(/_/g, " ") || "unknown reason";
}

/** A planarity score or its cut-off: up to three significant digits ("0.21", "0.128"). */
export const fig = (v) => (isNum(v) ? String(Number(v.toPrecision(3))) : "?");

/** "score 0.21 > cut-off 0.128, 2.4 s" (no score when the turn was never reached). */
export function livenessFigures(d) {
  const parts = [];
  if (isNum(d.residual)) {
    parts.push(`score ${fig(d.residual)}` + (isNum(d.cutoff) ? ` ${d.residual > d.cutoff ? ">" : "≤"} cut-off ${fig(d.cutoff)}` : ""));
  }
  if (isNum(d.seconds)) parts.push(`${d.seconds.toFixed(1)} s`);
  return parts.join(", ");
}

/** The challenged person, as the feed names them: "Ada", "face #3". */
const challenged = (d) => d.name || (d.track_id != null ? `face #${d.track_id}` : "the face");

/** "Live ✓ Ada — access granted (score 0.21 > cut-off 0.128, 2.4 s)"
 *  "Not live ✗ Ada: moved like a photo or screen — access denied (score 0.05 ≤ cut-off 0.128, 3.1 s)" */
export function livenessText(d) {
  const figures = livenessFigures(d);
  const access = d.access === "granted" ? " — access granted" : d.access === "denied" ? " — access denied" : "";
  const verdict = d.passed ? `Live ✓ ${challenged(d)}` : `Not live ✗ ${challenged(d)}: ${livenessReason(d.reason)}`;
  return verdict + access + (figures ? ` (${figures})` : "");
}

/** One line for any event, as the feed and the history show it: [text, kind]. */
export function describe(type, d) {
  const face = d.track_id != null ? ` (face #${d.track_id})` : "";
  switch (type) {
    case "person_recognized":
      if (d.access === "pending") return [`${recognizedText(d)} — checking liveness…`, "checking"];
      if (d.access === "denied") return [`${recognizedText(d)} — access denied`, "error"];
      return [recognizedText(d), "known"];
    case "unknown_person_detected": return [unknownText(d), "unknown"];
    case "person_left_area": return [`${d.name || "Unknown person"} left the area`, "left"];
    case "source_status": return [`Camera ${d.state}: ${d.message || d.source || ""}`, d.state === "connected" ? "system" : "error"];
    case "system_ready": return [d.message || "System ready", "system"];
    case "registration_waiting":
      return [`Waiting for an operator's decision${face}` + (isNum(d.seconds_left) ? `: ${Math.round(d.seconds_left)} s` : "") +
        (d.extended ? " (extended)" : ""), "decision"];
    case "registration_approved": return [`Registration approved${d.name ? ` for ${d.name}` : ""}`, "reg"];
    case "registration_start": return [d.message || "Registration started", "reg"];
    case "registration_angle_instruction": return [d.instruction || d.message || `Pose ${d.angle_name}`, "reg"];
    case "registration_pose_feedback": return [`Pose ${d.angle_name}: captured ${d.captured ?? 0} / ${d.needed ?? "?"}`, "reg"];
    case "registration_angle_complete": return [d.message || `Pose ${d.angle_name} captured`, "reg"];
    case "registration_complete": return [d.message || `Registered ${d.name}`, "success"];
    case "registration_failed": return [`Registration failed: ${reasonWords(d.reason, d)}`, "error"];
    case "registration_cancelled": return [`Registration cancelled: ${reasonWords(d.reason, d)}`, "cancelled"];
    case "liveness_challenge":
      return [`Liveness check for ${challenged(d)}: ${d.instruction || d.message || `turn ${d.direction}`}` +
        (isNum(d.timeout_seconds) ? ` (${Math.round(d.timeout_seconds)} s)` : ""), "checking"];
    case "liveness_pose_feedback": {
      const deg = (v) => (isNum(v) ? `${v.toFixed(0)}°` : "–");
      return [`Liveness turn ${d.direction || "?"}${d.phase === "return" ? ", coming back" : ""}${face}: ` +
        `yaw ${deg(d.yaw)}, pitch ${deg(d.pitch)}` + (d.hint ? ` — ${d.hint}` : "") +
        (isNum(d.seconds_left) ? `, ${Math.ceil(d.seconds_left)} s left` : ""), "checking"];
    }
    case "liveness_result": return [livenessText(d), d.passed ? "success" : "error"];
    default: return [d.message || type.replace(/_/g, " "), "info"];
  }
}
