// The persons gallery: thumbnails, inline rename, delete behind a confirmation dialog;
// clicking a person (its photo or name) opens their detail.
import { api, thumbnailUrl } from "./api.js";

const list = document.getElementById("gallery");
const delDialog = document.getElementById("delete-dialog");
let objectUrls = [], pendingDelete = null, loading = null;
let notify = () => {}, openDetail = () => {}, listeners = [];

/** onNotice(text, kind); onOpen(person): a person was clicked. */
export function initGallery(onNotice, onOpen = () => {}) {
  notify = onNotice;
  openDetail = onOpen;
  document.getElementById("gallery-refresh").addEventListener("click", () => refreshGallery());
  document.getElementById("delete-cancel").addEventListener("click", () => delDialog.close());
  document.getElementById("delete-confirm").addEventListener("click", async () => {
    const p = pendingDelete;
    delDialog.close();
    if (!p) return;
    try {
      await api(`/api/persons/${encodeURIComponent(p.person_id)}`, { method: "DELETE" });
      notify(`Deleted ${p.name} and erased their biometric data`);
    } catch (e) { notify(`Could not delete ${p.name}: ${e.message}`, "error"); }
    refreshGallery();
  });
  delDialog.addEventListener("close", () => { pendingDelete = null; });
}

/** Called with the persons list each time it is loaded (the history's person filter). */
export function onPersons(fn) { listeners.push(fn); }

/** The delete confirmation (also the person detail's Erase). */
export function confirmDelete(p) {
  pendingDelete = p;
  document.getElementById("delete-name").textContent = p.name;
  delDialog.showModal();
}

/** Whether this page's role may see the gallery; if not, say so in its place. */
function galleryAllowed() {
  const role = document.body.dataset.role;
  if (!role || role === "admin") return true;
  list.replaceChildren(item("li", "empty", "Only an admin can see and change the gallery (open the panel with an admin token)."));
  return false;
}

/** Re-fetch and re-render; skipped while a name is being edited (it would lose the edit). */
export function refreshGallery() {
  if (list.querySelector(".person.editing")) return Promise.resolve();
  if (!galleryAllowed()) return Promise.resolve();
  if (loading) return loading;
  loading = (async () => {
    try {
      const persons = await api("/api/persons");
      if (!galleryAllowed()) return; // the role arrived while the list was loading
      listeners.forEach((fn) => fn(persons || []));
      if (!list.querySelector(".person.editing")) await render(persons || []);
    } catch (e) {
      if (!galleryAllowed()) return;
      list.replaceChildren(item("li", "empty", `Gallery unavailable: ${e.message}`));
    } finally { loading = null; }
  })();
  return loading;
}

function item(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function render(persons) {
  persons.sort((a, b) => String(a.name).localeCompare(String(b.name)));
  const thumbs = await Promise.all(persons.map((p) => thumbnailUrl(p.person_id)));
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = thumbs.filter(Boolean);
  list.replaceChildren(...(persons.length ? persons.map((p, i) => card(p, thumbs[i])) : [item("li", "empty", "No one is registered yet.")]));
}

function card(p, thumb) {
  const li = item("li", "person");
  li.dataset.personId = p.person_id;
  const fig = item("button", "thumb");
  fig.type = "button";
  fig.setAttribute("aria-label", `Details of ${p.name}`);
  fig.addEventListener("click", () => openDetail(p));
  if (thumb) {
    const img = item("img");
    img.src = thumb;
    img.alt = `Photo of ${p.name}`;
    fig.appendChild(img);
  } else {
    fig.textContent = initials(p.name);
    fig.classList.add("noimg");
  }
  const name = item("span", "person-name", p.name);
  name.title = `${p.name}: details`;
  name.addEventListener("click", () => { if (!li.classList.contains("editing")) openDetail(p); });
  const meta = item("span", "meta",
    `${p.embeddings ?? "?"} embeddings` + (p.created_at ? ` · ${new Date(p.created_at).toLocaleDateString()}` : ""));
  if (p.note) meta.title = p.note;
  const actions = item("div", "actions");
  actions.append(
    button("ghost small", "Rename", `Rename ${p.name}`, () => startRename(li, p, name)),
    button("danger small", "Delete", `Delete ${p.name}`, () => confirmDelete(p)));
  li.append(fig, name, meta, actions);
  return li;
}

function button(cls, text, label, onClick) {
  const b = item("button", cls, text);
  b.type = "button";
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}
const initials = (n) => String(n || "?").split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("");

// Inline edit: Enter or leaving the field saves, Escape cancels.
function startRename(li, p, nameEl) {
  if (li.classList.contains("editing")) return;
  li.classList.add("editing");
  const input = item("input", "rename-input");
  input.value = p.name;
  input.setAttribute("aria-label", `New name for ${p.name}`);
  input.maxLength = 80;
  nameEl.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const value = input.value.trim();
    li.classList.remove("editing");
    input.replaceWith(nameEl);
    if (!save || !value || value === p.name) return;
    nameEl.textContent = value; // optimistic; refresh below shows the server's truth
    try {
      await api(`/api/persons/${encodeURIComponent(p.person_id)}`, { method: "PATCH", body: { name: value } });
      notify(`Renamed ${p.name} to ${value}`);
    } catch (e) { notify(`Could not rename ${p.name}: ${e.message}`, "error"); }
    refreshGallery();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    else if (e.key === "Escape") { e.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}
