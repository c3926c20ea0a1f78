"""The one page ``mlx-align chat`` serves at ``/``: a chat that collects judgements.

Everything is inline (no external script, style or font; the server's
Content-Security-Policy forbids any). The page asks for answers through
mlx-lm's ``POST /v1/chat/completions`` with ``stream: true`` and names each
answer by the ``id`` of that reply; ``POST /api/feedback`` saves a 👍 / 👎,
an edit, or a pick between the answer and "another" sample. Text is always
set with ``textContent``, never parsed as HTML.
"""

from __future__ import annotations

import json

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mlx-align chat</title>
<link rel="icon" href="data:,">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
main{max-width:760px;margin:0 auto;padding:16px}
header{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap}
h1{font-size:18px;margin:0 0 8px}
#stats{font-size:13px;color:#555}
.turn{margin:10px 0}
.user{background:#dde8f8;padding:8px 12px;border-radius:8px;white-space:pre-wrap}
.answers{display:flex;gap:8px}
.answer{flex:1;background:#fff;border:1px solid #ddd;padding:8px 12px;border-radius:8px}
.answer.dropped{opacity:.45}
.answer .text{white-space:pre-wrap;min-height:1.2em}
.answer textarea{width:100%;min-height:5em;font:inherit;box-sizing:border-box}
.tools{margin-top:6px;display:flex;gap:6px;flex-wrap:wrap;align-items:center}
button{font:inherit;padding:2px 10px;border:1px solid #bbb;border-radius:6px;background:#fafafa;cursor:pointer}
button:disabled{cursor:default;opacity:.5}
button.on{background:#cfe8cf;opacity:1}
.note{font-size:12px;color:#666}
.error{color:#a00}
form{display:flex;gap:8px;margin-top:12px}
#prompt{flex:1;font:inherit;padding:6px}
pre{background:#eee;padding:6px;white-space:pre-wrap;word-break:break-all;font-size:12px}
</style></head>
<body><main>
<header><h1>mlx-align chat</h1>
<div id="stats">saved: <span id="stat-ratings">0</span> ratings
(<span id="stat-good">0</span> 👍, <span id="stat-bad">0</span> 👎),
<span id="stat-pairs">0</span> pairs</div></header>
<div id="chat"></div>
<form id="ask"><textarea id="prompt" rows="2" placeholder="Ask something"></textarea>
<button id="send" type="submit">Send</button></form>
<p class="note">👍 / 👎 save a KTO row; <b>edit</b> saves your text over the model's as a
DPO pair; <b>another</b> samples a second answer, then <b>pick</b> the better one
(a DPO pair). Nothing leaves this machine. Train on what you saved:</p>
<pre id="train-dpo"></pre><pre id="train-kto"></pre>
</main>
<script>
"use strict";
const CONFIG = /*CONFIG*/null;
const history = [];       // the conversation the next answer continues
let latest = null;        // the turn whose answer is the history's last message
let busy = false;

const trim = (s) => s.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, "");  // the server's

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showStats(s) {
  for (const k of ["ratings", "good", "bad", "pairs"])
    document.getElementById("stat-" + k).textContent = s[k];
  document.getElementById("train-dpo").textContent = s.train.dpo;
  document.getElementById("train-kto").textContent = s.train.kto;
}

async function post(path, body) {
  const r = await fetch(path, {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function feedback(body, note) {
  try {
    const data = await post("/api/feedback", body);
    showStats(data.stats);
    note.className = "note"; note.textContent = "saved";
    return true;
  } catch (e) {
    note.className = "note error"; note.textContent = e.message;
    return false;
  }
}

// One streamed answer from mlx-lm's OpenAI route; its reply id names it.
async function sample(messages, textNode) {
  const r = await fetch("/v1/chat/completions", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({messages, stream: true,
      max_tokens: CONFIG.max_tokens, temperature: CONFIG.temperature})});
  if (!r.ok) throw new Error((await r.text()) || r.statusText);
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let id = null, text = "", buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const chunk = JSON.parse(event.slice(6));
      id = chunk.id || id;
      const delta = chunk.choices.length ? chunk.choices[0].delta : {};
      if (delta.content) { text += delta.content; textNode.textContent = text; }
    }
  }
  return {id, text: trim(text)};
}

function answerCard(turn, messages) {
  const card = el("div", "answer");
  const text = el("div", "text", "…");
  const tools = el("div", "tools");
  card.append(text, tools);
  turn.answers.append(card);
  return {card, text, tools, messages, id: null, content: ""};
}

function addTools(turn, answer) {
  const {tools} = answer;
  const note = el("span", "note");
  const up = el("button", "up", "👍"), down = el("button", "down", "👎");
  const edit = el("button", "edit", "edit"), another = el("button", "another", "another");
  for (const [button, label] of [[up, true], [down, false]]) {
    button.onclick = async () => {
      up.disabled = down.disabled = true;
      if (await feedback({kind: "rating", answer_id: answer.id, label}, note))
        button.classList.add("on");
      else up.disabled = down.disabled = false;
    };
  }
  edit.onclick = () => startEdit(turn, answer, edit, note);
  another.onclick = () => sampleAnother(turn, answer, another);
  tools.append(up, down, edit, another, note);
  answer.buttons = {up, down, edit, another};
}

function startEdit(turn, answer, button, note) {
  button.disabled = true;
  const box = el("textarea", "edit-box");
  box.value = answer.content;
  const save = el("button", "save-edit", "save edit");
  answer.text.replaceWith(box);
  save.onclick = async () => {
    save.disabled = true;
    const ok = await feedback({kind: "edit", answer_id: answer.id, text: box.value}, note);
    if (!ok) { save.disabled = false; return; }
    answer.content = trim(box.value);
    answer.text.textContent = answer.content;
    box.replaceWith(answer.text); save.remove();
    if (turn === latest) history[history.length - 1].content = answer.content;
  };
  answer.tools.prepend(save);
}

async function sampleAnother(turn, first, button) {
  if (busy) return;
  busy = true; button.disabled = true;
  const second = answerCard(turn, first.messages);
  try {
    const {id, text} = await sample(first.messages, second.text);
    second.id = id; second.content = text; second.text.textContent = text;
  } catch (e) {
    second.text.textContent = e.message; second.text.classList.add("error");
    busy = false; return;
  }
  busy = false;
  const note = el("span", "note", "which is better?");
  for (const [mine, other] of [[first, second], [second, first]]) {
    const pick = el("button", "pick", "pick this");
    pick.onclick = async () => {
      for (const b of turn.answers.querySelectorAll(".pick")) b.disabled = true;
      const ok = await feedback({kind: "pick", chosen_id: mine.id, rejected_id: other.id}, note);
      if (!ok) { for (const b of turn.answers.querySelectorAll(".pick")) b.disabled = false; return; }
      pick.classList.add("on");
      other.card.classList.add("dropped");
      if (turn === latest) history[history.length - 1].content = mine.content;
    };
    mine.tools.append(pick);
  }
  second.tools.append(note);
}

async function ask(question) {
  busy = true;
  if (latest) for (const b of [latest.first.buttons.edit, latest.first.buttons.another])
    b.disabled = true;  // only the last turn can still change the conversation
  history.push({role: "user", content: question});
  const turn = {node: el("div", "turn"), answers: el("div", "answers")};
  turn.node.append(el("div", "user", question), turn.answers);
  document.getElementById("chat").append(turn.node);
  const messages = history.map(m => ({...m}));
  const first = answerCard(turn, messages);
  turn.first = first;
  try {
    const {id, text} = await sample(messages, first.text);
    first.id = id; first.content = text; first.text.textContent = text;
  } catch (e) {
    first.text.textContent = e.message; first.text.classList.add("error");
    history.pop(); busy = false; return;
  }
  history.push({role: "assistant", content: first.content});
  latest = turn;
  addTools(turn, first);
  busy = false;
}

document.getElementById("ask").onsubmit = (event) => {
  event.preventDefault();
  const box = document.getElementById("prompt");
  const question = trim(box.value);
  if (!question || busy) return;
  box.value = "";
  ask(question);
};
showStats(CONFIG.stats);
</script></body></html>
"""


def render_page(stats: dict, max_tokens: int, temperature: float) -> str:
    """The page with its sampling settings and the counts so far; ``</`` is
    escaped so no text in them can close the script."""
    config = {"stats": stats, "max_tokens": max_tokens, "temperature": temperature}
    blob = json.dumps(config).replace("</", "<\\/")
    return PAGE.replace("/*CONFIG*/null", blob)
