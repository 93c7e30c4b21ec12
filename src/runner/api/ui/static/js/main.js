// Boot: API key prompt (when the server has one), model picker, conversations list,
// settings, and the chat and status panes.

import { OPENAI_PREFIX, apiKey, getJson, keyRequired, setApiKey, whenUnauthorized } from "./api.js";
import { ChatView } from "./chat.js";
import { StatusView } from "./status.js";
import { loadConversations, loadSettings, newConversation, saveConversations, saveSettings } from "./store.js";

const $ = (id) => document.getElementById(id);

const settings = loadSettings();
let conversations = loadConversations();
let current = null;
let storeModels = []; // [{id, entryId, dmr}] from the OpenAI model list + /models
let started = false;

const chat = new ChatView({
  list: $("messages"),
  onChange: (conversation) => {
    conversation.updated = Date.now();
    conversations = [conversation, ...conversations.filter((c) => c.id !== conversation.id)];
    saveConversations(conversations);
    renderConversations();
  },
  onBusy: (busy) => {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
  },
});

const status = new StatusView($("status"), {
  storeModels: () => storeModels,
  onChange: (loaded) => markLoaded(loaded),
});

function persistSettings() {
  settings.model = $("model").value;
  settings.system = $("system").value;
  settings.temperature = Number($("temperature").value);
  settings.max_tokens = Number($("max-tokens").value);
  settings.tools = $("tools").value;
  settings.toolChoice = $("tool-choice").value;
  saveSettings(settings);
}

function renderConversations() {
  const items = conversations.map((conversation) => {
    const li = document.createElement("li");
    li.dataset.id = conversation.id;
    if (current && conversation.id === current.id) li.classList.add("active");
    const title = document.createElement("span");
    title.textContent = conversation.title || "New chat";
    title.title = conversation.title || "";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Delete this conversation";
    remove.dataset.action = "delete";
    li.append(title, remove);
    return li;
  });
  $("conversations").replaceChildren(...items);
}

function open(conversation) {
  current = conversation;
  $("system").value = conversation.system ?? settings.system;
  if (conversation.model && [...$("model").options].some((o) => o.value === conversation.model)) {
    $("model").value = conversation.model;
  }
  chat.show(conversation);
  renderConversations();
}

function startNewChat() {
  if (chat.busy) return;
  persistSettings();
  open(newConversation(settings));
  $("prompt").focus();
}

async function loadModels() {
  const [openai, entries] = await Promise.all([getJson(`${OPENAI_PREFIX}/models`), getJson("/models")]);
  const idOfTag = new Map();
  for (const entry of entries) for (const tag of entry.tags || []) idOfTag.set(tag, entry.id.replace(/^sha256:/, ""));
  storeModels = openai.data.map((m) => ({ id: m.id, entryId: idOfTag.get(m.id) || m.id, dmr: m.dmr || {} }));
  const select = $("model");
  select.replaceChildren(
    ...storeModels.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.id;
      return option;
    }),
  );
  const wanted = (current && current.model) || settings.model;
  if (storeModels.some((m) => m.id === wanted)) select.value = wanted;
  showModelInfo();
}

function showModelInfo() {
  const model = storeModels.find((m) => m.id === $("model").value);
  const d = model ? model.dmr : {};
  $("model-info").textContent = model
    ? [d.parameters, d.quantization, d.size, d.context_window && `${d.context_window} ctx`].filter(Boolean).join(" · ")
    : "no models in the store";
}

function markLoaded(rows) {
  const ids = new Set(rows.filter((r) => !r.loading).map((r) => r.model_id));
  const names = new Set(rows.map((r) => r.model_name));
  for (const option of $("model").options) {
    const model = storeModels.find((m) => m.id === option.value);
    const loaded = names.has(option.value) || (model && ids.has(model.entryId));
    option.textContent = loaded ? `${option.value} (loaded)` : option.value;
  }
}

function wire() {
  $("model").addEventListener("change", () => {
    persistSettings();
    showModelInfo();
  });
  for (const id of ["system", "temperature", "max-tokens", "tools", "tool-choice"]) {
    $(id).addEventListener("change", persistSettings);
  }
  $("new-chat").addEventListener("click", startNewChat);
  $("stop").addEventListener("click", () => chat.stop());
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || chat.busy || !$("model").value) return;
    const tools = readTools();
    if (tools === null) return;
    persistSettings();
    $("prompt").value = "";
    chat.send(text, {
      model: $("model").value,
      system: $("system").value,
      temperature: settings.temperature,
      maxTokens: settings.max_tokens,
      tools,
      toolChoice: $("tool-choice").value,
    });
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("conversations").addEventListener("click", (event) => {
    const li = event.target.closest("li");
    if (!li || chat.busy) return;
    const conversation = conversations.find((c) => c.id === li.dataset.id);
    if (!conversation) return;
    if (event.target.dataset.action === "delete") {
      conversations = conversations.filter((c) => c !== conversation);
      saveConversations(conversations);
      if (current === conversation) startNewChat();
      else renderConversations();
      return;
    }
    open(conversation);
  });
  $("toggle-status").addEventListener("click", () => {
    settings.statusOpen = !settings.statusOpen;
    saveSettings(settings);
    showStatusPane();
  });
  $("key-form").addEventListener("submit", () => {
    setApiKey($("key-input").value.trim());
    $("key-input").value = "";
    boot();
  });
}

// The Tools box: [] when empty, the parsed array, or null (and a message) when invalid.
function readTools() {
  const raw = $("tools").value.trim();
  let tools = [];
  let problem = "";
  if (raw) {
    try {
      tools = JSON.parse(raw);
      if (!Array.isArray(tools)) problem = "Tools must be a JSON array of tool definitions.";
    } catch (err) {
      problem = `Tools are not valid JSON: ${err.message}`;
    }
  }
  $("tools-error").textContent = problem;
  $("tools-error").hidden = !problem;
  if (problem) $("tools-box").open = true;
  return problem ? null : tools;
}

function showStatusPane() {
  $("status").hidden = !settings.statusOpen;
  $("toggle-status").setAttribute("aria-pressed", String(settings.statusOpen));
}

function askForKey(message) {
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

async function boot() {
  if (keyRequired() && !apiKey()) {
    askForKey();
    return;
  }
  try {
    await loadModels();
  } catch (err) {
    if (err.status !== 401) $("model-info").textContent = `cannot list models: ${err.message}`;
    return;
  }
  if (!started) {
    started = true;
    status.start();
  }
}

whenUnauthorized(() => {
  setApiKey(null);
  askForKey("That key was not accepted.");
});
$("temperature").value = settings.temperature;
$("max-tokens").value = settings.max_tokens;
$("system").value = settings.system;
$("tools").value = settings.tools;
$("tool-choice").value = settings.toolChoice;
$("tools-box").open = Boolean(settings.tools);
showStatusPane();
wire();
open(conversations[0] || newConversation(settings));
boot();
