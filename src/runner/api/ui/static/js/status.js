// The status pane: loaded models (memory estimate, idle countdown, unload), models in the
// store (preload), slots (busy/idle, cached tokens) and the prompt-cache tiers, from
// /engines/status, /slots and /metrics, refreshed every second while the tab is visible.

import { el } from "./dom.js";
import { OPENAI_PREFIX, apiKey, getJson, getText, keyRequired, postJson, request } from "./api.js";

const REFRESH_MS = 1000;

export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit ? `${value.toFixed(1)} ${units[unit]}` : `${value} B`;
}

// Prometheus text -> [{name, labels, value}] (enough of the format for runner's /metrics).
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([^{\s]+)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function metric(samples, name, labels) {
  const hit = samples.find(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return hit ? hit.value : undefined;
}

function keepAliveSeconds(value) {
  if (value === "-1") return -1;
  const match = /^([\d.]+)s$/.exec(value || "");
  return match ? Number(match[1]) : null;
}

function idleText(row) {
  if (row.loading) return "loading…";
  if (row.in_use) return "in use";
  const keep = keepAliveSeconds(row.keep_alive);
  if (keep === -1) return "kept loaded";
  if (keep === null) return "";
  const left = Math.max(0, keep - (Date.now() - Date.parse(row.last_used)) / 1000);
  const minutes = Math.floor(left / 60);
  const seconds = String(Math.floor(left % 60)).padStart(2, "0");
  return `unloads in ${minutes}:${seconds}`;
}

export class StatusView {
  constructor(root, { storeModels, onChange }) {
    this.root = root;
    this.storeModels = storeModels; // () => [{id, entryId}] of the model picker
    this.onChange = onChange; // (loaded rows) => void, after each refresh
    this.timer = null;
    this.message = "";
    root.addEventListener("click", (event) => this.act(event));
  }

  start() {
    const tick = async () => {
      if (!document.hidden && !this.root.hidden) await this.refresh();
      this.timer = setTimeout(tick, REFRESH_MS);
    };
    tick();
  }

  async refresh() {
    if (keyRequired() && !apiKey()) return; // waiting for the key dialog
    try {
      const status = await getJson("/engines/status");
      const ready = status.models.filter((m) => !m.loading);
      const slots = await Promise.all(
        ready.map((m) => getJson(`/slots?model=${encodeURIComponent(m.model_name)}`).catch(() => [])),
      );
      const samples = parseMetrics(await getText("/metrics"));
      const cache = await getJson("/engines/cache").catch(() => ({ models: [] }));
      this.render(status, ready, slots, samples, cache);
      this.onChange(status.models);
    } catch (err) {
      this.root.querySelector("#status-engine").textContent = `status unavailable: ${err.message}`;
    }
  }

  render(status, ready, slots, samples, cache) {
    const q = (id) => this.root.querySelector(id);
    q("#status-updated").textContent = new Date().toLocaleTimeString();

    const models = q("#status-models");
    const cards = status.models.map((row) => {
      const card = el("div", "card");
      card.dataset.model = row.model_name;
      const head = el("div", "row");
      head.append(el("span", "name", row.model_name));
      const state = row.loading ? "loading" : row.in_use ? "busy" : "idle";
      head.append(el("span", `pill ${state}`, state));
      const unload = el("button", "small", "Unload");
      unload.dataset.action = "unload";
      unload.dataset.model = row.model_name;
      head.append(unload);
      card.append(head);
      const slotsText = `${row.slots} slots × ${row.context_size} tokens`;
      card.append(el("div", "muted", `${formatBytes(row.memory_estimate)} est. · ${slotsText}`));
      card.append(el("div", "muted idle", idleText(row)));
      return card;
    });
    const loadedIds = new Set(status.models.map((m) => m.model_id));
    const loadedNames = new Set(status.models.map((m) => m.model_name));
    const seen = new Set();
    for (const model of this.storeModels()) {
      if (loadedIds.has(model.entryId) || loadedNames.has(model.id) || seen.has(model.entryId)) continue;
      seen.add(model.entryId);
      const card = el("div", "card");
      const head = el("div", "row");
      head.append(el("span", "name", model.id), el("span", "pill", "not loaded"));
      const preload = el("button", "small", "Preload");
      preload.dataset.action = "preload";
      preload.dataset.model = model.id;
      head.append(preload);
      card.append(head);
      cards.push(card);
    }
    if (this.message) cards.push(el("div", "muted", this.message));
    models.replaceChildren(...cards);

    const slotBox = q("#status-slots");
    const slotNodes = [];
    ready.forEach((row, i) => {
      if (ready.length > 1) slotNodes.push(el("div", "muted", row.model_name));
      for (const slot of slots[i]) {
        const line = el("div", "slot");
        line.dataset.slotId = slot.id;
        line.dataset.slotState = slot.is_processing ? "busy" : "idle";
        line.append(el("span", null, `slot ${slot.id}`));
        line.append(el("span", `pill ${slot.is_processing ? "busy" : "idle"}`, slot.is_processing ? "busy" : "idle"));
        const meter = el("div", "meter");
        meter.title = `${slot.n_cached_tokens} of ${slot.n_ctx} tokens cached`;
        const fill = el("div");
        fill.style.width = `${Math.min(100, (100 * slot.n_cached_tokens) / (slot.n_ctx || 1))}%`;
        meter.append(fill);
        line.append(meter);
        slotNodes.push(line, el("div", "muted", `${slot.n_cached_tokens} / ${slot.n_ctx} tokens cached`));
      }
    });
    if (!slotNodes.length) slotNodes.push(el("div", "muted", "no model loaded"));
    slotBox.replaceChildren(...slotNodes);

    q("#status-cache").replaceChildren(...this.cacheTables(ready, samples), ...this.pinTables(cache));
    const budget = status.memory_budget ? ` of ${formatBytes(status.memory_budget)}` : "";
    const gpus = (status.devices || [])
      .filter((d) => d.type !== "cpu")
      .map((d) => ` · ${d.description || d.name}: ${formatBytes(d.memory_free)} free of ${formatBytes(d.memory_total)}`);
    q("#status-engine").textContent =
      `${status.version} · memory ${formatBytes(status.memory_used_estimate)}${budget} · ` +
      `idle timeout ${status.idle_timeout < 0 ? "never" : `${status.idle_timeout}s`}${gpus.join("")}`;
  }

  cacheTables(ready, samples) {
    const nodes = [];
    for (const row of ready) {
      const model = row.model_name;
      if (ready.length > 1) nodes.push(el("div", "muted", model));
      const computed = metric(samples, "llamacpp:prompt_tokens_total", { model }) ?? 0;
      const cached = metric(samples, "llamacpp:prompt_tokens_cached_total", { model }) ?? 0;
      nodes.push(el("div", "muted", `prompt tokens: ${cached} reused, ${computed} computed`));
      const lookups = metric(samples, "runner:prompt_cache_lookups_total", { model });
      if (lookups === undefined) {
        nodes.push(el("div", "muted", "no RAM/disk tiers"));
        continue;
      }
      const misses = metric(samples, "runner:prompt_cache_misses_total", { model }) ?? 0;
      const table = el("table", "kv");
      const head = el("tr");
      for (const h of ["tier", "entries", "bytes / capacity", "hits"]) head.append(el("th", null, h));
      table.append(head);
      for (const tier of ["ram", "disk"]) {
        const get = (name) => metric(samples, name, { model, tier });
        const entries = get("runner:prompt_cache_entries");
        if (entries === undefined) continue;
        const tr = el("tr");
        tr.dataset.tier = tier;
        tr.append(
          el("td", null, tier),
          el("td", null, String(entries)),
          el("td", null, `${formatBytes(get("runner:prompt_cache_bytes"))} / ${formatBytes(get("runner:prompt_cache_capacity_bytes"))}`),
          el("td", null, String(get("runner:prompt_cache_hits_total") ?? 0)),
        );
        table.append(tr);
      }
      nodes.push(table, el("div", "muted", `lookups ${lookups}, misses ${misses}`));
    }
    if (!nodes.length) nodes.push(el("div", "muted", "no model loaded"));
    return nodes;
  }

  // Prefixes clients pinned (cache breakpoints, 24h retention), of every model with a cache:
  // pins outlive unloads. The countdown is as of this refresh.
  pinTables(cache) {
    const nodes = [];
    for (const model of cache.models || []) {
      if (!model.pins.length) continue;
      nodes.push(el("div", "muted", `pinned prefixes of ${model.model}`));
      const table = el("table", "kv");
      const head = el("tr");
      for (const h of ["tokens", "tier", "bytes", "TTL left", "hits", ""]) head.append(el("th", null, h));
      table.append(head);
      for (const pin of model.pins) {
        const tr = el("tr");
        tr.dataset.pinId = pin.id;
        const drop = el("button", "small", "Drop");
        drop.dataset.action = "drop-pin";
        drop.dataset.pin = pin.id;
        const cell = el("td");
        cell.append(drop);
        tr.append(
          el("td", null, String(pin.tokens)),
          el("td", null, pin.tier || "slot"),
          el("td", null, formatBytes(pin.bytes)),
          el("td", "ttl-left", countdown(pin.ttl_left)),
          el("td", null, String(pin.hits)),
          cell,
        );
        table.append(tr);
      }
      nodes.push(table);
    }
    return nodes;
  }

  async act(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const model = button.dataset.model;
    button.disabled = true;
    try {
      if (button.dataset.action === "drop-pin") {
        await request(`/engines/cache/pins/${button.dataset.pin}`, { method: "DELETE" });
        this.message = "pin dropped";
      } else if (button.dataset.action === "unload") {
        const result = await postJson("/engines/unload", { models: [model] });
        this.message = result.busy.length ? `${model} is busy; it unloads once idle` : `unloaded ${model}`;
      } else {
        this.message = `loading ${model}…`;
        const body = { model, messages: [{ role: "user", content: "" }] };
        await request(`${OPENAI_PREFIX}/chat/completions`, {
          method: "POST",
          body,
          extraHeaders: { "X-Preload-Only": "true" },
        });
        this.message = `loaded ${model}`;
      }
    } catch (err) {
      this.message = `${button.dataset.action} failed: ${err.message}`;
    }
    await this.refresh();
  }
}

function countdown(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${s}s`;
}
