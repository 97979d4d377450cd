// The REST API (/api/v1) with the user's bearer token.
//
// The token lives in this tab's sessionStorage (gone when the tab closes) and travels only
// in the Authorization header: never in a URL, where logs and history would keep it. That
// is also why the event stream is read with fetch() and not EventSource, which cannot send
// headers.

const BASE = "/api/v1";
const TOKEN_KEY = "consortium.token";
const FLASH_KEY = "consortium.flash";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

/** Forget the token; `message` is shown on the login page. */
export function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (message) sessionStorage.setItem(FLASH_KEY, message);
  if (!location.hash.startsWith("#/login")) location.hash = "#/login";
}

/** The message left for the login page (once). */
export function takeFlash() {
  const message = sessionStorage.getItem(FLASH_KEY);
  sessionStorage.removeItem(FLASH_KEY);
  return message;
}

/** An error answer of the API: its status, code, message and the field it names. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not JSON (a proxy's page): the status line says enough
  }
  return new ApiError(response.status, error.code || "http-error",
    error.message || `${response.status} ${response.statusText}`, error.field);
}

/** One request; a 401 logs out (the token expired or was revoked) and throws. */
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const current = token();
  if (!current) {
    logout("Log in with an API token.");
    throw new ApiError(401, "unauthenticated", "no token");
  }
  const response = await fetch(BASE + path, {
    method,
    body,
    signal,
    headers: { ...headers, Authorization: `Bearer ${current}` },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (response.ok) return response;
  const error = await errorOf(response);
  if (response.status === 401) logout(`The server refused your token: ${error.message}`);
  throw error;
}

export async function get(path, options) {
  return (await request(path, options)).json();
}

export async function post(path, value) {
  const response = await request(path, {
    method: "POST",
    body: JSON.stringify(value),
    headers: { "Content-Type": "application/json" },
  });
  return response.json();
}

/** Upload raw bytes (an app bundle). */
export async function upload(path, data) {
  const response = await request(path, {
    method: "POST",
    body: data,
    headers: { "Content-Type": "application/octet-stream" },
  });
  return response.json();
}

/** Fetch a file with the token and hand it to the browser as a download. */
export async function download(path, fallbackName) {
  const response = await request(path);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), {
    href: url,
    download: match ? match[1] : fallbackName,
  });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { name: link.download, size: blob.size };
}

/** Check a token before keeping it: the run list needs only read access. */
export async function tryToken(candidate) {
  const response = await fetch(`${BASE}/runs`, {
    headers: { Authorization: `Bearer ${candidate}` },
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) throw await errorOf(response);
}

/**
 * Read a run's Server-Sent Events (GET /runs/{id}/events) until the stream ends or
 * `signal` aborts; each event is handed to onEvent({event, id, data}).
 */
export async function events(runId, after, onEvent, signal) {
  const response = await request(`/runs/${encodeURIComponent(runId)}/events?after=${after}`, {
    headers: { Accept: "text/event-stream" },
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", id: null, data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.event = text;
        else if (field === "id") event.id = text;
        else if (field === "data") event.data += text;
      }
      if (event.data) onEvent({ ...event, data: JSON.parse(event.data) });
    }
  }
}
