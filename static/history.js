// Event history (viewer role): GET /api/events, newest first, a page at a time (Older /
// Newer walk with `before=`), filtered by type and, for an admin, by person. The first page
// follows new events by itself. Rows: tr[data-seq][data-type].

import { api } from "./api.js";
import { $, make, describe, role } from "./ui.js";

const PAGE = 15;
const NEWEST = "9223372036854775807"; // before= this: the newest page (2^63 - 1, as text)
const ALL = ["person_recognized", "unknown_person_detected", "person_left_area", "source_status", "system_ready",
  "registration_waiting", "registration_approved", "registration_start", "registration_angle_instruction",
  "registration_pose_feedback", "registration_angle_complete", "registration_complete", "registration_failed",
  "registration_cancelled"];
const TYPES = [ // the first is the default: the pose readings (several a second) hide the rest
  [ALL.filter((t) => t !== "registration_pose_feedback").join(), "All events but pose readings"],
  ["", "All events"],
  ["person_recognized", "Recognized"],
  ["unknown_person_detected", "Unknown person"],
  ["person_left_area", "Left the area"],
  ["registration_complete,registration_failed,registration_cancelled", "Registration outcomes"],
  ["registration_waiting,registration_approved,registration_start,registration_angle_complete,registration_complete,registration_failed,registration_cancelled", "Registration steps"],
  ["source_status,system_ready", "Camera and system"],
];
const NOT_HISTORY = new Set(["tracks", "pong", "connected", "decision_result", "error"]);

const state = { cursors: [NEWEST], items: [], more: false, loading: null, again: false };
let followTimer = null;

export function initHistory() {
  const type = $("history-type");
  type.replaceChildren(...TYPES.map(([v, label]) => Object.assign(make("option", "", label), { value: v })));
  type.addEventListener("change", () => reload());
  $("history-person").addEventListener("change", () => reload());
  $("history-older").addEventListener("click", () => {
    const last = state.items.at(-1);
    if (!state.more || !last) return;
    state.cursors.push(String(last.data.seq));
    load();
  });
  $("history-newer").addEventListener("click", () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    load();
  });
  $("history-refresh").addEventListener("click", () => reload());
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

/** Back to the newest page with the current filters. */
export function reload() {
  state.cursors = [NEWEST];
  return load();
}

/** A live event arrived: the newest page shows it (one reload per burst). */
export function historyNoticed(type) {
  if (NOT_HISTORY.has(type) || type === "registration_pose_feedback" || state.cursors.length > 1) return;
  clearTimeout(followTimer);
  followTimer = setTimeout(() => load(), 800);
}

function query() {
  const q = new URLSearchParams({ limit: String(PAGE + 1), before: state.cursors.at(-1) });
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
      const rows = await api(query());
      const items = (Array.isArray(rows) ? rows : []).filter((r) => r && r.data && typeof r.type === "string");
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
  td.colSpan = 4;
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
  const when = new Date(d.timestamp);
  const t = make("time", "", isNaN(when) ? "" : when.toLocaleString([], { hour12: false }));
  if (!isNaN(when)) t.dateTime = when.toISOString();
  const tdTime = make("td", "h-time");
  tdTime.append(t);
  const [text, kind] = describe(type, d);
  const tdText = make("td", `h-text ${kind}`, text);
  const tdType = make("td", "h-type", type.replace(/_/g, " "));
  const who = d.name || (d.person_id ? String(d.person_id).slice(0, 8) : d.track_id != null ? `face #${d.track_id}` : "");
  tr.append(tdTime, tdType, tdText, make("td", "h-who", who));
  return tr;
}

function controls() {
  const page = state.cursors.length;
  $("history-newer").disabled = page <= 1;
  $("history-older").disabled = !state.more;
  $("history-page").textContent = page === 1 ? "newest" : `page ${page}`;
  $("history").dataset.page = String(page);
}
