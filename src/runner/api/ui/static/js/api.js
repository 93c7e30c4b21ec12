// Calls to runner's own API (same origin only). With --api-key the key lives in
// sessionStorage for this tab's session and goes out as a bearer token.

const KEY_STORAGE = "runner.apiKey";
export const OPENAI_PREFIX = "/engines/llama.cpp/v1";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

export function keyRequired() {
  const meta = document.querySelector('meta[name="runner-auth"]');
  return meta !== null && meta.content === "required";
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(extra) {
  const out = { ...extra };
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code;
    }
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) onUnauthorized();
  return new ApiError(response.status, message, code);
}

// fetch() that throws ApiError on a non-2xx answer.
export async function request(path, { method = "GET", body, signal, extraHeaders } = {}) {
  const init = { method, signal, headers: headers(extraHeaders) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function getText(path) {
  return (await request(path)).text();
}

export async function postJson(path, body, extraHeaders) {
  return (await request(path, { method: "POST", body, extraHeaders })).json();
}

// POST a streaming chat completion and call onChunk(chunk) for each SSE `data:` JSON.
// Aborting `signal` closes the connection, which makes the server cancel the request.
export async function streamChat(body, signal, onChunk) {
  const response = await request(`${OPENAI_PREFIX}/chat/completions`, {
    method: "POST",
    body: { ...body, stream: true, stream_options: { include_usage: true } },
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code);
      onChunk(chunk);
    }
  }
}
