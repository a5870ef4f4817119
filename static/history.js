// Event history (viewer role): GET /api/events, newest first, a page at a time, filtered by
// gate, type and, for an admin, by person. The gates share one store: this gate's events (the
// default) and another gate's page with `before=` (each gate numbers its own events); all
// gates together page with `until=` (unix seconds, older than it). The first page follows new
// events by itself. Rows: tr[data-seq][data-type][data-gate].

import { api } from "./api.js";
import { $, make, describe, role, thisGate } from "./ui.js";

const PAGE = 15;
const NEWEST = "9223372036854775807"; // before= this: the newest page (2^63 - 1, as text)
const ALL = ["person_recognized", "unknown_person_detected", "person_left_area", "source_status", "system_ready",
  "registration_waiting", "registration_approved", "registration_start", "registration_angle_instruction",
  "registration_pose_feedback", "registration_angle_complete", "registration_complete", "registration_failed",
  "registration_cancelled", "liveness_challenge", "liveness_pose_feedback", "liveness_result"];
const POSE_READINGS = new Set(["registration_pose_feedback", "liveness_pose_feedback"]);
const TYPES = [ // the first is the default: the pose readings (several a second) hide the rest
  [ALL.filter((t) => !POSE_READINGS.has(t)).join(), "All events but pose readings"],
  ["", "All events"],
  ["person_recognized", "Recognized"],
  ["liveness_challenge,liveness_result", "Liveness checks"],
  ["unknown_person_detected", "Unknown person"],
  ["person_left_area", "Left the area"],
  ["registration_complete,registration_failed,registration_cancelled", "Registration outcomes"],
  ["registration_waiting,registration_approved,registration_start,registration_angle_complete,registration_complete,registration_failed,registration_cancelled", "Registration steps"],
  ["source_status,system_ready", "Camera and system"],
];
const NOT_HISTORY = new Set(["tracks", "pong", "connected", "decision_result", "error"]);

const ALL_GATES = "all"; // the gate selector's value for every gate ("" is this gate)

// A page's cursor: { before: SEQ } for one gate; { until, skip } for all gates, where `until`
// takes in the last row's millisecond (events stamped in the same one may straddle pages) and
// `skip` lists the rows of it already shown.
const allGates = () => $("history-gate").value === ALL_GATES;
const newest = () => (allGates() ? { until: null, skip: [] } : { before: NEWEST });
const rowKey = (r) => `${r.data.gate_id ?? ""}#${r.data.seq}`;
const msOf = (r) => Date.parse(r.data.timestamp);

const state = { cursors: [{ before: NEWEST }], items: [], more: false, loading: null, again: false };
let followTimer = null;

export function initHistory() {
  const type = $("history-type");
  type.replaceChildren(...TYPES.map(([v, label]) => Object.assign(make("option", "", label), { value: v })));
  type.addEventListener("change", () => reload());
  $("history-person").addEventListener("change", () => reload());
  $("history-gate").addEventListener("change", () => reload());
  $("history-older").addEventListener("click", () => {
    const last = state.items.at(-1);
    if (!state.more || !last) return;
    const next = olderCursor(last);
    if (!next) return;
    state.cursors.push(next);
    load();
  });
  $("history-newer").addEventListener("click", () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    load();
  });
  $("history-refresh").addEventListener("click", () => { refreshGates(); reload(); });
}

/** The gallery's persons, for the person filter (admin only). */
export function setHistoryPersons(persons) {
  const sel = $("history-person");
  const keep = sel.value;
  const sorted = [...persons].sort((a, b) => String(a.name).localeCompare(String(b.name)));
  sel.replaceChildren(Object.assign(make("option", "", "Anyone"), { value: "" }),
    ...sorted.map((p) => Object.assign(make("option", "", p.name), { value: p.person_id })));
  sel.value = sorted.some((p) => p.person_id === keep) ? keep : "";
  if (keep && sel.value !== keep) reload(); // the filtered person was erased
}

/** The gates sharing the history (GET /api/gates), for the gate selector. */
export async function refreshGates() {
  let gates;
  try {
    gates = await api("/api/gates");
  } catch {
    return; // the selector keeps what it has (at least this gate and all gates)
  }
  if (!Array.isArray(gates)) return;
  const sel = $("history-gate");
  const keep = sel.value;
  const me = gates.find((g) => g && g.this);
  const others = gates.filter((g) => g && !g.this && typeof g.gate === "string");
  const option = (value, label) => Object.assign(make("option", "", label), { value });
  sel.replaceChildren(option("", me ? `This gate (${me.gate})` : "This gate"),
    ...others.map((g) => option(g.gate, g.gate)), option(ALL_GATES, "All gates"));
  sel.value = keep === "" || keep === ALL_GATES || others.some((g) => g.gate === keep) ? keep : "";
  if (sel.value !== keep) reload(); // the chosen gate is no longer in the history
}

/** Back to the newest page with the current filters. */
export function reload() {
  state.cursors = [newest()];
  return load();
}

/** The cursor of the page after the one whose last row is `last`. */
function olderCursor(last) {
  if (!allGates()) return { before: String(last.data.seq) };
  const ms = msOf(last);
  if (isNaN(ms)) return null;
  const current = state.cursors.at(-1);
  const until = ((ms + 0.5) / 1000).toFixed(4);
  const shown = state.items.filter((r) => msOf(r) === ms).map(rowKey);
  // A millisecond that filled whole pages: the rows of it seen on the pages before too.
  const skip = current.until === until ? [...current.skip, ...shown] : shown;
  if (skip.length > 200) return { until: ((ms - 0.5) / 1000).toFixed(4), skip: [] }; // step over it
  return { until, skip };
}

/** A live event arrived: the newest page shows it (one reload per burst). */
export function historyNoticed(type) {
  if (NOT_HISTORY.has(type) || POSE_READINGS.has(type) || state.cursors.length > 1) return;
  clearTimeout(followTimer);
  followTimer = setTimeout(() => load(), 800);
}

function query() {
  const cursor = state.cursors.at(-1);
  const q = new URLSearchParams({ limit: String(PAGE + 1 + (cursor.skip ? cursor.skip.length : 0)) });
  const gate = $("history-gate").value;
  if (gate) q.set("gate", gate);
  if (cursor.before) q.set("before", cursor.before);
  if (cursor.until) q.set("until", cursor.until);
  const type = $("history-type").value;
  if (type) q.set("type", type);
  const person = role() === "admin" ? $("history-person").value : "";
  if (person) q.set("person_id", person);
  return `/api/events?${q}`;
}

function load() {
  if (state.loading) { state.again = true; return state.loading; }
  state.loading = (async () => {
    const table = $("history");
    table.dataset.loading = "true";
    try {
      const skip = new Set(state.cursors.at(-1).skip || []);
      const rows = await api(query());
      const items = (Array.isArray(rows) ? rows : [])
        .filter((r) => r && r.data && typeof r.type === "string" && !skip.has(rowKey(r)));
      state.more = items.length > PAGE;
      state.items = items.slice(0, PAGE);
      render();
    } catch (e) {
      state.items = [];
      state.more = false;
      $("history-body").replaceChildren(emptyRow(`History unavailable: ${e.message}`));
      controls();
    } finally {
      table.dataset.loading = "false";
      state.loading = null;
      if (state.again) { state.again = false; load(); }
    }
  })();
  return state.loading;
}

function emptyRow(text) {
  const tr = make("tr", "empty");
  const td = make("td", "", text);
  td.colSpan = 5;
  tr.append(td);
  return tr;
}

function render() {
  const body = $("history-body");
  if (!state.items.length) {
    body.replaceChildren(emptyRow(state.cursors.length > 1 ? "No older events." : "No events match."));
  } else {
    body.replaceChildren(...state.items.map(row));
  }
  controls();
}

function row({ type, data: d }) {
  const tr = make("tr", "");
  tr.dataset.seq = String(d.seq ?? "");
  tr.dataset.type = type;
  tr.dataset.gate = d.gate_id ?? "";
  const when = new Date(d.timestamp);
  const t = make("time", "", isNaN(when) ? "" : when.toLocaleString([], { hour12: false }));
  if (!isNaN(when)) t.dateTime = when.toISOString();
  const tdTime = make("td", "h-time");
  tdTime.append(t);
  const [text, kind] = describe(type, d);
  const tdText = make("td", `h-text ${kind}`, text);
  const tdType = make("td", "h-type", type.replace(/_/g, " "));
  const who = d.name || (d.person_id ? String(d.person_id).slice(0, 8) : d.track_id != null ? `face #${d.track_id}` : "");
  const tdGate = make("td", "h-gate", d.gate_id || "–");
  if (d.gate_id && d.gate_id === thisGate()) tdGate.classList.add("this-gate");
  tr.append(tdTime, tdGate, tdType, tdText, make("td", "h-who", who));
  return tr;
}

function controls() {
  const page = state.cursors.length;
  $("history-newer").disabled = page <= 1;
  $("history-older").disabled = !state.more;
  $("history-page").textContent = page === 1 ? "newest" : `page ${page}`;
  $("history").dataset.page = String(page);
}
