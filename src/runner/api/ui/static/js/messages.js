// Rendering of one chat message: Markdown content, reasoning, tool calls and the per-message
// prompt-cache figures (tokens reused vs computed, where the reuse came from, speed).
// Built with DOM calls: the page's Content-Security-Policy forbids inline style attributes.

import { el } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

function figure(label, field, value) {
  const span = el("span");
  span.append(`${label} `);
  const b = el("b", null, value);
  b.dataset.field = field;
  span.append(b);
  return span;
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

// The cache bar and figures from a response's `timings` (plus TTFT measured here).
export function renderStats(stats) {
  const box = el("div", "stats");
  const reused = stats.cache_n ?? 0;
  const computed = stats.prompt_n ?? 0;
  const total = reused + computed;
  const bar = el("span", "cachebar");
  bar.title = `${reused} of ${total} prompt tokens reused from the cache`;
  const reusedPart = el("span", "reused");
  const computedPart = el("span", "computed");
  reusedPart.style.width = total ? `${(100 * reused) / total}%` : "0%";
  computedPart.style.width = total ? `${(100 * computed) / total}%` : "0%";
  bar.append(reusedPart, computedPart);
  box.append(bar);
  const reusedFigure = figure("reused", "cache_n", String(reused));
  reusedFigure.className = "legend-reused";
  const computedFigure = figure("computed", "prompt_n", String(computed));
  computedFigure.className = "legend-computed";
  box.append(reusedFigure, computedFigure);
  box.append(figure("from", "cache_source", stats.cache_source || "none"));
  if (stats.ttft_ms !== undefined) box.append(figure("TTFT", "ttft", formatMs(stats.ttft_ms)));
  box.append(figure("prompt", "prompt_ms", formatMs(stats.prompt_ms ?? 0)));
  const speed = stats.predicted_per_second ?? 0;
  box.append(figure("", "tokens_per_second", `${speed.toFixed(1)} tok/s`));
  box.append(figure("", "predicted_n", `${stats.predicted_n ?? 0} tokens`));
  return box;
}

function renderToolCalls(calls) {
  const box = el("details", "tool-calls");
  box.open = true;
  box.append(el("summary", null, `Tool calls (${calls.length})`));
  for (const call of calls) {
    const fn = call.function || {};
    box.append(el("pre", null, `${fn.name || "?"}(${fn.arguments || ""})`));
  }
  return box;
}

export function renderMessage(message, streaming) {
  const node = el("div", `msg ${message.role}`);
  if (message.error) node.classList.add("error-msg");
  const role = message.role === "assistant" && message.model ? `assistant · ${message.model}` : message.role;
  node.append(el("div", "role", role));
  if (message.role === "user") {
    node.append(el("div", "content", message.content));
    return node;
  }
  if (message.reasoning) {
    const box = el("details", "reasoning");
    box.open = streaming && !message.content;
    box.append(el("summary", null, "Reasoning"), el("pre", null, message.reasoning));
    node.append(box);
  }
  const content = el("div", "content");
  content.innerHTML = renderMarkdown(message.content || "");
  node.append(content);
  if (message.tool_calls && message.tool_calls.length) node.append(renderToolCalls(message.tool_calls));
  if (message.error) node.append(el("div", "note error", message.error));
  else if (message.stopped) node.append(el("div", "note", "stopped"));
  else if (message.finish_reason === "length") node.append(el("div", "note", "stopped at the max tokens limit"));
  else if (streaming && !message.content && !message.reasoning) node.append(el("div", "note", "thinking…"));
  if (message.stats) node.append(renderStats(message.stats));
  node.dataset.state = streaming ? "streaming" : "done";
  return node;
}

// Fold a streamed `delta.tool_calls` fragment into the message's list (OpenAI's shape:
// fragments carry an `index`; the name and arguments arrive in pieces).
export function mergeToolCalls(message, fragments) {
  message.tool_calls = message.tool_calls || [];
  for (const fragment of fragments) {
    const index = fragment.index ?? message.tool_calls.length;
    const call = (message.tool_calls[index] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
    if (fragment.id) call.id = fragment.id;
    const fn = fragment.function || {};
    if (fn.name) call.function.name += fn.name;
    if (fn.arguments) call.function.arguments += fn.arguments;
  }
}
