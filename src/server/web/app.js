// The chat page of `qwen serve`: streams replies from /v1/chat/completions (SSE), keeps the
// conversation in this tab (and localStorage), renders Markdown. No dependencies: it must work
// offline, served from the binary.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"),
  clear: $("clear"), system: $("system"), model: $("model-name"), stats: $("stats"),
  apiKey: $("api_key"), composer: $("composer"),
};
const SETTINGS = ["system", "temperature", "top_p", "top_k", "max_tokens", "repetition_penalty", "seed"];
const STORE = "qwen-chat-v1";

let history = []; // [{role, content}]
let controller = null;

// ---- Markdown (a safe subset: everything is escaped first) ----

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function inline(text) {
  // Code spans first, so their content is left alone.
  const parts = text.split(/(`[^`\n]+`)/g);
  return parts.map((p) => {
    if (p.length > 1 && p.startsWith("`") && p.endsWith("`")) {
      return "<code>" + escapeHtml(p.slice(1, -1)) + "</code>";
    }
    let s = escapeHtml(p);
    s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>");
    s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^)\s"]+)\)/g,
      '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
    return s;
  }).join("");
}

function renderMarkdown(src) {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];
  let list = null; // {tag, items}
  const flushPara = () => {
    if (para.length) out.push("<p>" + para.map(inline).join("<br>") + "</p>");
    para = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.tag}>` + list.items.map((i) => `<li>${inline(i)}</li>`).join("") + `</${list.tag}>`);
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
    if (fence) {
      flushPara(); flushList();
      const code = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) code.push(lines[i++]);
      const lang = fence[1] ? ` class="language-${escapeHtml(fence[1])}"` : "";
      out.push(`<pre><code${lang}>` + escapeHtml(code.join("\n")) + "</code></pre>");
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flushPara(); flushList();
      const level = Math.min(heading[1].length, 3);
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      continue;
    }
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (bullet || numbered) {
      flushPara();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tag !== tag) { flushList(); list = { tag, items: [] }; }
      list.items.push((bullet || numbered)[1]);
      continue;
    }
    if (line.trim() === "") { flushPara(); flushList(); continue; }
    flushList();
    para.push(line);
  }
  flushPara(); flushList();
  return out.join("");
}

// ---- Conversation ----

// A message bubble; its `.body` holds the text (Markdown for the assistant), a `.meta` line
// may follow it.
function addBubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "body";
  if (role === "assistant") body.innerHTML = renderMarkdown(text);
  else body.textContent = text;
  div.appendChild(body);
  els.messages.appendChild(div);
  els.messages.scrollTop = els.messages.scrollHeight;
  return div;
}

function addMeta(div, text) {
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = text;
  div.appendChild(meta);
}

function save() {
  const settings = {};
  for (const id of SETTINGS) settings[id] = $(id).value;
  try {
    localStorage.setItem(STORE, JSON.stringify({ history, settings }));
  } catch (e) { /* storage full or disabled: the page still works */ }
}

function load() {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { saved = null; }
  if (!saved) return;
  for (const id of SETTINGS) if (saved.settings && id in saved.settings) $(id).value = saved.settings[id];
  history = Array.isArray(saved.history) ? saved.history.filter((m) => m && typeof m.content === "string") : [];
  for (const m of history) addBubble(m.role, m.content);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = els.apiKey.value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function number(id, parse) {
  const v = $(id).value.trim();
  if (v === "") return undefined;
  const n = parse(v);
  return Number.isFinite(n) ? n : undefined;
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.disabled = !busy;
  els.input.disabled = false;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addBubble("user", text);
  save();
  const bubble = addBubble("assistant", "");
  bubble.classList.add("streaming");
  const messages = [];
  const system = els.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = {
    messages, stream: true, stream_options: { include_usage: true },
    temperature: number("temperature", parseFloat), top_p: number("top_p", parseFloat),
    top_k: number("top_k", (v) => parseInt(v, 10)), max_tokens: number("max_tokens", (v) => parseInt(v, 10)),
    repetition_penalty: number("repetition_penalty", parseFloat), seed: number("seed", (v) => parseInt(v, 10)),
  };
  controller = new AbortController();
  setBusy(true);
  let reply = "";
  let finish = null;
  let usage = null;
  let failed = null;
  let scheduled = false;
  const started = performance.now();
  const replyEl = bubble.querySelector(".body");
  const redraw = () => {
    scheduled = false;
    replyEl.innerHTML = renderMarkdown(reply);
    els.messages.scrollTop = els.messages.scrollHeight;
  };
  try {
    const resp = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          if (choice.delta && typeof choice.delta.content === "string") reply += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
          if (!scheduled) { scheduled = true; requestAnimationFrame(redraw); }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else failed = e.message || String(e);
  }
  controller = null;
  redraw();
  bubble.classList.remove("streaming");
  const secs = (performance.now() - started) / 1000;
  if (failed !== null && reply === "") {
    bubble.remove();
    addBubble("error", "Error: " + failed);
    history.pop();
  } else {
    history.push({ role: "assistant", content: reply });
    let meta = finish ? finish : "";
    if (usage) meta += ` · ${usage.completion_tokens} tokens in ${secs.toFixed(1)} s`;
    if (failed !== null) meta += " · error: " + failed;
    addMeta(bubble, meta);
    bubble.dataset.finish = finish || "";
  }
  save();
  setBusy(false);
  els.input.focus();
}

els.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text || controller) return;
  els.input.value = "";
  send(text);
});

els.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});

els.stop.addEventListener("click", () => { if (controller) controller.abort(); });

els.clear.addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  els.messages.textContent = "";
  save();
});

for (const id of SETTINGS) $(id).addEventListener("change", save);

async function hello() {
  try {
    const resp = await fetch("v1/models", { headers: headers() });
    if (resp.status === 401) { els.model.textContent = "enter the API key"; return; }
    const data = await resp.json();
    els.model.textContent = data.data[0].id;
  } catch (e) {
    els.model.textContent = "server not reachable";
  }
}

els.apiKey.addEventListener("change", hello);
load();
hello();
setBusy(false);
