// The registration card: the guided capture's progress (one segment per pose), the live head
// pose gauge, the hint (#pose-hint), the time left for the pose (#pose-countdown, data-seconds),
// and the result with what to do next (#result, #next-step).

import { updateGauge } from "./gauge.js";
import { $, make, isNum } from "./ui.js";

const DEFAULT_ANGLES = ["front", "left", "right", "up", "down"];
const reg = { angles: DEFAULT_ANGLES, done: new Set(), current: null, needed: null, deadline: null };

export const capturing = () => $("registration").dataset.state === "active";

/** One labelled segment per pose: .done when captured, .current for the pose being asked for. */
export function renderProgress(percent) {
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

export function beginCapture(angles) {
  reg.angles = Array.isArray(angles) && angles.length ? angles : DEFAULT_ANGLES;
  reg.done = new Set();
  reg.current = null;
  $("registration").dataset.state = "active";
  document.body.dataset.registering = "true"; // no Register on other faces meanwhile
  showResult("");
}

/** Back to idle; the progress bar keeps showing how far it got. */
export function endCapture() {
  reg.current = null;
  reg.deadline = null;
  $("registration").dataset.state = "idle";
  document.body.dataset.registering = "false";
  $("instruction").textContent = "No registration in progress.";
  $("pose-readout").textContent = "yaw –, pitch –";
  $("pose-captured").textContent = "";
  setHint("");
  tick();
  updateGauge(null);
  renderProgress($("progress").dataset.progress);
}

export function showResult(text, kind = "", nextStep = "") {
  $("result").textContent = text;
  $("result").className = `result ${kind}`;
  $("next-step").textContent = nextStep || "";
  $("next-step").hidden = !nextStep;
}

export function setInstruction(text) { $("instruction").textContent = text; }

/** /system_status after a (re)connection. */
export function applyCaptureStatus(s) {
  if (s.registration_in_progress && s.current_registration_angle) {
    if (!capturing()) beginCapture(reg.angles);
    setCurrent(s.current_registration_angle);
    setInstruction(`Capturing pose: ${s.current_registration_angle}`);
    renderProgress(s.registration_progress);
  } else if (!s.registration_in_progress && capturing()) {
    endCapture();
  }
}

export function onStart(d) {
  beginCapture(d.angles);
  setInstruction(d.message || "Starting capture");
  renderProgress(0);
}

export function onInstruction(d) {
  if (!capturing()) beginCapture(reg.angles);
  setCurrent(d.angle_name);
  setInstruction(d.instruction || d.message);
  renderProgress(d.progress);
  // A new pose: the last pose's readings no longer apply until fresh feedback arrives.
  $("pose-readout").textContent = "yaw –, pitch –";
  $("pose-captured").textContent = `captured 0 / ${reg.needed ?? "?"}`;
  setHint("");
  reg.deadline = isNum(d.timeout_seconds) && d.timeout_seconds > 0 ? Date.now() + d.timeout_seconds * 1000 : null;
  tick();
  updateGauge(null);
}

export function onFeedback(d) {
  if (!capturing()) return;
  reg.needed = d.needed;
  updateGauge(d);
  const deg = (v) => (isNum(v) ? `${v.toFixed(0)}°` : "–");
  $("pose-readout").textContent = `yaw ${deg(d.yaw)}, pitch ${deg(d.pitch)}`;
  $("pose-captured").textContent = `captured ${d.captured ?? 0} / ${d.needed ?? "?"}`;
  if (d.hint) setHint(d.hint, "move");
  else if (d.held) setHint("Hold it there…", "held");
  else if (!isNum(d.yaw)) setHint("Step into view of the camera", "move");
  else setHint("");
  if (isNum(d.seconds_left)) { reg.deadline = Date.now() + d.seconds_left * 1000; tick(); }
  const seg = $("progress").querySelector(`.seg[data-angle="${CSS.escape(d.angle_name || "")}"]`);
  if (seg && d.needed) seg.style.setProperty("--fill", `${Math.round((100 * (d.captured || 0)) / d.needed)}%`);
}

export function onAngleComplete(d) {
  reg.done.add(d.angle_name);
  renderProgress(d.progress);
}

export function onComplete() {
  reg.angles.forEach((a) => reg.done.add(a));
  reg.current = null;
  renderProgress(100);
  endCapture();
}

function setHint(text, kind = "") {
  const el = $("pose-hint");
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = !text;
}

function tick() {
  const el = $("pose-countdown");
  if (reg.deadline == null || !capturing()) {
    el.hidden = true;
    el.dataset.seconds = "";
    return;
  }
  const left = Math.max(0, Math.ceil((reg.deadline - Date.now()) / 1000));
  el.hidden = false;
  el.dataset.seconds = String(left);
  el.classList.toggle("urgent", left <= 5);
  el.textContent = `${left} s left for this pose`;
}

export function initCapture() {
  renderProgress(0);
  setHint("");
  tick();
  setInterval(tick, 250);
}
