// HTTP + WebSocket helpers. An optional ?token=... in the page URL is passed on:
// as ?token= on the WebSocket and on <img> URLs (an <img> cannot send headers),
// and as "Authorization: Bearer" on fetches (the live video included: see video.js).

const token = new URLSearchParams(location.search).get("token");

/** The Authorization header for a fetch ({} without a token). */
export const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

export function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

/** URL for an <img>; `bust` forces a fresh request (e.g. to restart an MJPEG stream). */
export function imgUrl(path, bust = false) {
  const q = new URLSearchParams();
  if (token) q.set("token", token);
  if (bust) q.set("t", Date.now().toString(36));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** fetch JSON; throws an Error carrying the server's message on a non-2xx answer. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (!res.ok) {
    const msg = (data && (data.message || data.detail || data.error)) || `${res.status} ${res.statusText}`;
    const err = new Error(typeof msg === "string" ? msg : JSON.stringify(msg));
    err.status = res.status;
    throw err;
  }
  return data;
}

/** An image behind the auth header as an object URL, or null when there is none. */
export async function blobUrl(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const res = await fetch(path, { headers, cache: "no-store" });
    if (!res.ok) return null;
    return URL.createObjectURL(await res.blob());
  } catch { return null; }
}

/** A person's thumbnail as an object URL (fetched with the auth header), or null. */
export const thumbnailUrl = (personId) => blobUrl(`/api/persons/${encodeURIComponent(personId)}/thumbnail`);

/**
 * POST a multipart form (photo uploads). Unlike api(), a refusal is an answer, not an
 * exception: resolves to {ok, status, data}; throws only when the server cannot be reached.
 */
export async function postForm(path, form) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(path, { method: "POST", headers, body: form, cache: "no-store" });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  return { ok: res.ok, status: res.status, data: data || {} };
}

/**
 * A self-healing WebSocket: reconnects with exponential backoff (1 s doubling to 10 s),
 * pings every 20 s and treats 45 s of silence as a dead connection.
 * onMessage(type, data); onState(online: boolean).
 */
export function connectSocket({ onMessage, onState }) {
  let ws = null, delay = 1000, lastSeen = 0, retryTimer = null;
  const open = () => {
    retryTimer = null;
    ws = new WebSocket(wsUrl());
    ws.onopen = () => { delay = 1000; lastSeen = Date.now(); onState(true); };
    ws.onmessage = (ev) => {
      lastSeen = Date.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg && typeof msg.type === "string") onMessage(msg.type, msg.data || {});
    };
    ws.onclose = () => {
      ws = null;
      onState(false);
      if (!retryTimer) retryTimer = setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    };
    ws.onerror = () => { /* onclose follows and schedules the retry */ };
  };
  setInterval(() => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - lastSeen > 45000) { ws.close(); return; }
    send("ping", {});
  }, 20000);
  function send(type, data = {}) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ type, data }));
    return true;
  }
  open();
  return { send };
}
