// Recent unknown faces (operator/admin): GET /api/unknowns, refreshed every few seconds and when
// a stranger is detected or leaves. Each row (li[data-track-id], data-present) shows the best
// view of the face, when it was first seen, for how long, whether it is in view; Register
// (only while in view) offers it for registration, Dismiss (DELETE) forgets it.

import { api, blobUrl } from "./api.js";
import { $, make, button, clock, duration, feed, canOperate, unknownWhy } from "./ui.js";

const REFRESH_MS = 3000;
const THUMB_MAX_AGE_MS = 15000; // a better view may have come: fetch the thumbnail again
const list = $("unknowns");
const rows = new Map(); // track_id -> {li, thumbAt, url}
let onRegister = () => {};
let timer = null, loading = null, again = false;

export function initUnknowns({ register }) {
  onRegister = register;
  $("unknowns-refresh").addEventListener("click", () => refreshUnknowns());
}

/** Re-fetch now (and keep refreshing every few seconds while the role may see it). */
export function refreshUnknowns() {
  clearTimeout(timer);
  if (!canOperate()) {
    list.replaceChildren(make("li", "empty", "Only an operator or admin can see the recent unknown faces."));
    forget(new Set());
    return Promise.resolve();
  }
  if (loading) { again = true; return loading; }
  loading = (async () => {
    try {
      render(await api("/api/unknowns"));
    } catch (e) {
      forget(new Set());
      list.replaceChildren(make("li", "empty", `Recent unknown faces unavailable: ${e.message}`));
    } finally {
      loading = null;
      timer = setTimeout(refreshUnknowns, REFRESH_MS);
      if (again) { again = false; refreshUnknowns(); }
    }
  })();
  return loading;
}

function render(faces) {
  faces = Array.isArray(faces) ? faces : [];
  const seen = new Set(faces.map((f) => f.track_id));
  forget(seen);
  if (!faces.length) {
    list.replaceChildren(make("li", "empty", "No unknown faces seen recently."));
    return;
  }
  list.querySelector(".empty")?.remove();
  faces.forEach((f, i) => {
    const row = rows.get(f.track_id) || create(f);
    update(row, f);
    if (list.children[i] !== row.li) list.insertBefore(row.li, list.children[i] || null);
  });
}

/** Drop the rows (and thumbnails) of faces no longer listed. */
function forget(keep) {
  for (const [id, row] of rows) {
    if (keep.has(id)) continue;
    row.li.remove();
    if (row.url) URL.revokeObjectURL(row.url);
    rows.delete(id);
  }
}

function create(f) {
  const li = make("li", "unknown-face");
  li.dataset.trackId = String(f.track_id);
  const thumb = make("div", "thumb noimg", "?");
  const body = make("div", "uf-body");
  const title = make("div", "uf-title");
  const id = make("strong", "", `Face #${f.track_id}`);
  const marker = make("span", "in-view", "in view");
  title.append(id, marker);
  const when = make("div", "meta uf-when");
  const why = make("div", "meta uf-why");
  const actions = make("div", "actions");
  const reg = button("primary small", "Register", () => onRegister(f.track_id), `Register face #${f.track_id}`);
  reg.classList.add("uf-register");
  const dismiss = button("ghost small", "Dismiss", () => dismissFace(f.track_id), `Dismiss face #${f.track_id}`);
  dismiss.classList.add("uf-dismiss");
  actions.append(reg, dismiss);
  body.append(title, when, why, actions);
  li.append(thumb, body);
  const row = { li, thumb, marker, when, why, reg, thumbAt: 0, url: null };
  rows.set(f.track_id, row);
  return row;
}

function update(row, f) {
  row.li.dataset.present = String(!!f.present);
  row.marker.hidden = !f.present;
  row.reg.hidden = !f.present; // only a face in view can be registered
  const busy = $("registration").dataset.state === "active";
  row.reg.disabled = busy;
  row.reg.title = busy ? "A registration is in progress" : "";
  const first = new Date(f.first_seen * 1000);
  row.when.textContent = `first seen ${clock(first)} · seen for ${duration(f.seconds_seen)}` +
    (f.present ? "" : ` · left ${clock(new Date(f.last_seen * 1000))}`);
  const why = unknownWhy(f);
  row.why.textContent = (why ? why[0].toUpperCase() + why.slice(1) : "") + (f.offered ? " · offered" : "");
  if (f.has_thumbnail && f.thumbnail && (!row.url || (f.present && Date.now() - row.thumbAt > THUMB_MAX_AGE_MS))) {
    row.thumbAt = Date.now();
    blobUrl(f.thumbnail).then((url) => {
      if (!url) return;
      if (!rows.has(f.track_id)) { URL.revokeObjectURL(url); return; }
      if (row.url) URL.revokeObjectURL(row.url);
      row.url = url;
      const img = make("img");
      img.src = url;
      img.alt = `Face #${f.track_id}`;
      row.thumb.classList.remove("noimg");
      row.thumb.replaceChildren(img);
    });
  }
}

async function dismissFace(trackId) {
  try {
    await api(`/api/unknowns/${encodeURIComponent(trackId)}`, { method: "DELETE" });
    feed(`Dismissed face #${trackId}: no more prompts for it`, "decision");
  } catch (e) {
    feed(`Could not dismiss face #${trackId}: ${e.message}`, "error");
  }
  refreshUnknowns();
}
