// Person detail (admin): opened by clicking a person in the gallery. GET /api/persons/{id}:
// poses captured, embeddings, created, updated, last seen; "Add photos" (POST multipart
// `files` to /api/persons/{id}/photos, the result with each refusal); Erase (the gallery's
// delete confirmation).

import { api, postForm, thumbnailUrl } from "./api.js";
import { $, make, feed } from "./ui.js";

const dlg = $("person-dialog");
let current = null, thumb = null, onChange = () => {}, erase = () => {};

export function initPerson({ changed, confirmErase }) {
  onChange = changed;
  erase = confirmErase;
  $("person-close").addEventListener("click", () => dlg.close());
  $("person-erase").addEventListener("click", () => {
    if (!current) return;
    const p = current;
    dlg.close();
    erase(p);
  });
  $("person-photos-form").addEventListener("submit", (e) => { e.preventDefault(); upload(); });
  $("person-files").addEventListener("change", () => {
    const n = $("person-files").files.length;
    $("person-upload").disabled = !n;
    $("person-upload").textContent = n ? `Add ${n} photo${n > 1 ? "s" : ""}` : "Add photos";
  });
  dlg.addEventListener("close", () => {
    current = null;
    if (thumb) URL.revokeObjectURL(thumb);
    thumb = null;
  });
}

/** Open the detail of a person ({person_id, name, ...} from the gallery list). */
export async function openPerson(p) {
  current = p;
  dlg.dataset.personId = p.person_id;
  $("person-title").textContent = p.name;
  $("person-files").value = "";
  $("person-upload").disabled = true;
  $("person-upload").textContent = "Add photos";
  setResult("", "");
  renderFacts(p);
  $("person-thumb").hidden = true;
  if (!dlg.open) dlg.showModal();
  await Promise.all([load(p.person_id), loadThumb(p.person_id)]);
}

async function load(pid) {
  dlg.dataset.loaded = "false";
  try {
    const p = await api(`/api/persons/${encodeURIComponent(pid)}`);
    if (!current || current.person_id !== pid) return;
    current = p;
    $("person-title").textContent = p.name;
    renderFacts(p);
    dlg.dataset.loaded = "true";
  } catch (e) {
    if (current && current.person_id === pid) setResult(`Could not load this person: ${e.message}`, "failure");
  }
}

async function loadThumb(pid) {
  const url = await thumbnailUrl(pid);
  if (!url || !current || current.person_id !== pid) { if (url) URL.revokeObjectURL(url); return; }
  if (thumb) URL.revokeObjectURL(thumb);
  thumb = url;
  $("person-thumb").src = url;
  $("person-thumb").alt = `Photo of ${current.name}`;
  $("person-thumb").hidden = false;
}

const when = (iso, none = "–") => {
  if (!iso) return none;
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString([], { hour12: false });
};

function renderFacts(p) {
  const poses = Array.isArray(p.poses) ? p.poses : [];
  const facts = [
    ["Poses captured", poses.length ? poses.join(", ") : "none recorded", "poses"],
    ["Embeddings", String(p.embeddings ?? "?"), "embeddings"],
    ["Created", when(p.created_at), "created"],
    ["Updated", when(p.updated_at), "updated"],
    ["Last seen", when(p.last_seen, "never") + (p.last_seen && p.last_seen_gate ? ` at ${p.last_seen_gate}` : ""), "last-seen"],
  ];
  if (p.note) facts.push(["Note", p.note, "note"]);
  $("person-facts").replaceChildren(...facts.flatMap(([k, v, key]) => {
    const dd = make("dd", "", v);
    dd.dataset.fact = key;
    return [make("dt", "", k), dd];
  }));
}

function setResult(text, kind, items = []) {
  const el = $("person-upload-result");
  el.className = `result ${kind}`;
  el.replaceChildren();
  if (text) el.append(make("p", "", text));
  if (items.length) {
    const ul = make("ul", "refusals");
    ul.append(...items.map((t) => make("li", "", t)));
    el.append(ul);
  }
  el.hidden = !text && !items.length;
  el.dataset.state = kind || "";
}

async function upload() {
  const files = [...$("person-files").files];
  if (!current || !files.length) return;
  const p = current;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  $("person-upload").disabled = true;
  setResult(`Analysing ${files.length} photo${files.length > 1 ? "s" : ""}…`, "busy");
  let r;
  try {
    r = await postForm(`/api/persons/${encodeURIComponent(p.person_id)}/photos`, form);
  } catch (e) {
    setResult(`Upload failed: ${e.message}`, "failure");
    $("person-upload").disabled = false;
    return;
  }
  const d = r.data || {};
  const refused = (Array.isArray(d.refused) ? d.refused : []).map((x) => `${x.path || "photo"}: refused — ${x.reason}`);
  const warnings = (Array.isArray(d.warnings) ? d.warnings : []).map((w) => `warning: ${w}`);
  if (r.ok) {
    const n = d.embeddings ?? 0;
    setResult(`Added ${n} embedding${n === 1 ? "" : "s"} to ${p.name}` + (refused.length ? `; ${refused.length} photo(s) refused:` : "."),
      refused.length ? "partial" : "success", [...refused, ...warnings]);
    feed(`Added ${n} photo embedding(s) to ${p.name}`, "success");
  } else {
    const why = d.error || (refused.length ? "no photo was accepted:" : `${r.status}`);
    setResult(`Nothing added: ${why}`, "failure", [...refused, ...warnings]);
  }
  $("person-files").value = "";
  $("person-upload").textContent = "Add photos";
  if (current && current.person_id === p.person_id) await load(p.person_id);
  onChange();
}
