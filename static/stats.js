// The stats strip: GET /api/stats every 2 s. The camera's name, state and rates come from
// `source` ({name, state, capture_fps, processed_fps, frames_dropped}), else from the monitor.

import { api } from "./api.js";
import { $, isNum } from "./ui.js";

let lastPersons = null, personsChanged = () => {}, onSource = () => {};

function fmtUptime(s) {
  s = Math.floor(Number(s) || 0);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${String(m).padStart(2, "0")} m`;
  return `${m} m ${String(s % 60).padStart(2, "0")} s`;
}
const fmt = (v, unit, digits = 1) => (isNum(v) ? `${v.toFixed(digits)} ${unit}` : "–");

function set(key, text, title) {
  const el = $("stats").querySelector(`[data-stat="${key}"]`);
  if (!el) return;
  el.textContent = text;
  if (title !== undefined) el.title = title;
}

async function poll() {
  try {
    const s = await api("/api/stats");
    const m = s.monitor || {};
    const src = s.source || {};
    set("source", src.name ? String(src.name) : "–", src.name ? String(src.name) : "");
    set("source_state", src.state ? String(src.state) : "–");
    $("stats").dataset.sourceState = src.state ? String(src.state) : "";
    set("capture_fps", fmt(isNum(src.capture_fps) ? src.capture_fps : m.capture_fps, "fps"));
    set("processed_fps", fmt(isNum(src.processed_fps) ? src.processed_fps : m.processed_fps, "fps"));
    set("frames_dropped", isNum(src.frames_dropped) ? String(src.frames_dropped) : "–");
    set("latency_p95", m.frame_to_event && m.frame_to_event.count ? fmt(m.frame_to_event.p95_ms, "ms", 0) : "–");
    set("connections", String(s.websocket_connections ?? "–"));
    set("persons", String(s.persons ?? "–"));
    set("uptime", m.uptime_s != null ? fmtUptime(m.uptime_s) : "–");
    $("stats").classList.remove("stale");
    if (src.state) onSource(src);
    // Someone else (another tab, the CLI) added or erased a person: show it.
    if (lastPersons !== null && s.persons !== lastPersons) personsChanged();
    lastPersons = s.persons;
  } catch {
    $("stats").classList.add("stale");
  }
  setTimeout(poll, 2000);
}

/** Start polling; personsChanged() when the number of persons changes, source(s.source). */
export function initStats({ personsChanged: changed, source }) {
  personsChanged = changed;
  onSource = source;
  poll();
}
