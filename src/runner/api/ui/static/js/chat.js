// The chat pane: shows one conversation and streams answers into it. Stop aborts the
// fetch; the server sees the connection close and cancels the request in its slot.

import { streamChat } from "./api.js";
import { mergeToolCalls, renderMessage } from "./messages.js";

export class ChatView {
  constructor({ list, onChange, onBusy }) {
    this.list = list; // the #messages element
    this.onChange = onChange; // conversation changed: save it
    this.onBusy = onBusy; // (busy: boolean) => void
    this.conversation = null;
    this.controller = null;
    this.pending = new Map(); // message -> scheduled animation frame
    list.addEventListener("click", (event) => this.copyCode(event));
  }

  get busy() {
    return this.controller !== null;
  }

  show(conversation) {
    this.conversation = conversation;
    this.list.replaceChildren(...conversation.messages.map((m) => renderMessage(m, false)));
    this.scrollToEnd(true);
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  async send(text, { model, system, temperature, maxTokens, tools, toolChoice }) {
    const conversation = this.conversation;
    const history = conversation.messages.map((m) => ({ role: m.role, content: m.content || "" }));
    if (system.trim()) history.unshift({ role: "system", content: system });
    history.push({ role: "user", content: text });
    conversation.system = system;
    conversation.model = model;
    if (!conversation.messages.length) conversation.title = text.slice(0, 60);
    const user = { role: "user", content: text };
    const answer = { role: "assistant", content: "", model };
    conversation.messages.push(user, answer);
    this.list.append(renderMessage(user, false));
    const node = renderMessage(answer, true);
    this.list.append(node);
    this.scrollToEnd(true);
    this.onChange(conversation);

    this.controller = new AbortController();
    this.onBusy(true);
    const started = performance.now();
    let firstTokenAt = null;
    const body = { model, messages: history, temperature, max_tokens: maxTokens };
    if (tools && tools.length) Object.assign(body, { tools, tool_choice: toolChoice });
    try {
      await streamChat(body, this.controller.signal, (chunk) => {
        const choice = (chunk.choices || [])[0];
        if (choice) {
          const delta = choice.delta || {};
          if (delta.content) answer.content += delta.content;
          if (delta.reasoning_content) answer.reasoning = (answer.reasoning || "") + delta.reasoning_content;
          if (delta.tool_calls) mergeToolCalls(answer, delta.tool_calls);
          if (firstTokenAt === null && (delta.content || delta.reasoning_content || delta.tool_calls)) {
            firstTokenAt = performance.now();
          }
          if (choice.finish_reason) answer.finish_reason = choice.finish_reason;
        }
        if (chunk.timings) {
          const ttft = (firstTokenAt ?? performance.now()) - started;
          answer.stats = { ...chunk.timings, ttft_ms: ttft };
        }
        if (chunk.usage) answer.usage = chunk.usage;
        this.schedule(answer, conversation);
      });
    } catch (err) {
      if (err.name === "AbortError") answer.stopped = true;
      else answer.error = err.message || String(err);
    } finally {
      this.controller = null;
      cancelAnimationFrame(this.pending.get(answer));
      this.pending.delete(answer);
      this.onBusy(false);
      conversation.updated = Date.now();
      this.onChange(conversation);
      if (this.conversation === conversation) this.rerender(answer, false);
    }
  }

  // Re-render a streaming message at most once per frame.
  schedule(message, conversation) {
    if (this.pending.has(message) || this.conversation !== conversation) return;
    this.pending.set(
      message,
      requestAnimationFrame(() => {
        this.pending.delete(message);
        if (this.conversation === conversation) this.rerender(message, true);
      }),
    );
  }

  rerender(message, streaming) {
    const index = this.conversation.messages.indexOf(message);
    const old = this.list.children[index];
    if (!old) return;
    const stick = this.nearEnd();
    const details = old.querySelector("details.reasoning");
    const node = renderMessage(message, streaming);
    const fresh = node.querySelector("details.reasoning");
    if (details && fresh) fresh.open = details.open; // keep what the user opened or closed
    old.replaceWith(node);
    if (stick) this.scrollToEnd(true);
  }

  nearEnd() {
    const l = this.list;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
  }

  scrollToEnd(force) {
    if (force || this.nearEnd()) this.list.scrollTop = this.list.scrollHeight;
  }

  copyCode(event) {
    const button = event.target.closest("button.copy");
    if (!button) return;
    const code = button.parentElement.querySelector("code");
    navigator.clipboard?.writeText(code ? code.textContent : "").then(
      () => (button.textContent = "copied"),
      () => (button.textContent = "failed"),
    );
  }
}
