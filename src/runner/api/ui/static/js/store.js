// Conversations and settings kept in this browser (localStorage).

const CONVERSATIONS = "runner.conversations";
const SETTINGS = "runner.settings";

export const DEFAULT_SETTINGS = {
  model: "",
  system: "You are a helpful assistant.",
  temperature: 0.7,
  max_tokens: 512,
  tools: "",
  toolChoice: "auto",
  statusOpen: true,
};

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

export function loadConversations() {
  const list = read(CONVERSATIONS, []);
  return Array.isArray(list) ? list : [];
}

export function saveConversations(list) {
  try {
    localStorage.setItem(CONVERSATIONS, JSON.stringify(list));
  } catch (err) {
    // Quota exceeded: drop the oldest conversations rather than lose the current one.
    if (list.length > 1) saveConversations(list.slice(0, -1));
    else console.warn("cannot save the conversation:", err);
  }
}

export function newConversation(settings) {
  return {
    id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    title: "New chat",
    model: settings.model,
    system: settings.system,
    messages: [],
    updated: Date.now(),
  };
}
