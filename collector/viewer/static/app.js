/* rollgate viewer: plain JS, no build step, no network but this server.
   Every piece of row data goes into the page as text nodes (never innerHTML), so rollouts cannot inject markup. */
"use strict";

const $ = (sel, root) => (root || document).querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const resp = await fetch(path, options);
  let body;
  try { body = await resp.json(); } catch (e) { body = {}; }
  if (!resp.ok) throw new Error((body.error && body.error.message) || resp.statusText);
  return body;
}

function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString() : v.toFixed(3).replace(/0+$/, "").replace(/\.$/, "");
  return String(v);
}

function rewardPill(v) {
  if (v === null || v === undefined) return el("span", {class: "pill none"}, "—");
  const t = Math.max(0, Math.min(1, v));
  const hue = Math.round(t * 125);  // red (0) .. green (1)
  return el("span", {class: "pill", style: `background:hsl(${hue} 70% 92%);color:hsl(${hue} 70% 26%);border-color:hsl(${hue} 60% 75%)`}, fmt(v));
}

function statusBadge(r) {
  if (r.status === "failed") {
    const e = r.error || {};
    return el("span", {class: "badge bad", title: e.message || ""}, `failed · ${e.stage || "?"}/${e.kind || "?"}`);
  }
  if (r.status === "malformed") return el("span", {class: "badge bad"}, "malformed line");
  if (r.status === "completed") return el("span", {class: "badge muted", title: "succeeded; another repeat of its task failed (failures sidecar)"}, "ok · group failed");
  return el("span", {class: "badge ok"}, "ok");
}

function pretty(value) {
  if (typeof value === "string") {
    const s = value.trim();
    if ((s.startsWith("{") && s.endsWith("}")) || (s.startsWith("[") && s.endsWith("]"))) {
      try { return JSON.stringify(JSON.parse(s), null, 2); } catch (e) { /* not JSON: show as is */ }
    }
    return value;
  }
  return JSON.stringify(value, null, 2);
}

function partText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((p) => {
      if (typeof p === "string") return p;
      if (p && typeof p.text === "string") return p.text;
      if (p && (p.type === "input_image" || p.type === "image_url")) return "[image]";
      return JSON.stringify(p);
    }).join("\n");
  }
  return JSON.stringify(content);
}

/* ---------- conversation ---------- */

function bubble(role, text, extraClass) {
  return el("div", {class: `msg ${role} ${extraClass || ""}`},
    el("div", {class: "role"}, role), el("div", {class: "text"}, text || el("i", {}, "(empty)")));
}

function renderItem(item) {
  if (!item || typeof item !== "object") return bubble("unknown", String(item));
  const type = item.type || (item.role ? "message" : "unknown");
  if (type === "reasoning") {
    const parts = [].concat(item.content || [], item.summary || []).map((p) => (p && p.text) || "").filter(Boolean);
    return el("details", {class: "msg reasoning", open: true},
      el("summary", {class: "role"}, "reasoning"), el("div", {class: "text"}, parts.join("\n\n") || "(hidden)"));
  }
  if (type === "function_call") {
    return el("div", {class: "msg call"},
      el("div", {class: "role"}, "function call ", el("code", {class: "fname"}, item.name || "?"),
        item.call_id ? el("span", {class: "callid"}, item.call_id) : null),
      el("pre", {class: "args"}, pretty(item.arguments === undefined ? "" : item.arguments)));
  }
  if (type === "function_call_output") {
    return el("div", {class: "msg tool"},
      el("div", {class: "role"}, "tool output", item.call_id ? el("span", {class: "callid"}, item.call_id) : null),
      el("pre", {class: "args"}, pretty(item.output === undefined ? "" : item.output)));
  }
  if (type === "message") {
    const role = item.role || "assistant";
    return bubble(role, partText(item.content));
  }
  return el("div", {class: "msg other"}, el("div", {class: "role"}, type), el("pre", {class: "args"}, pretty(item)));
}

function renderConversation(data, options) {
  const opts = options || {};
  const box = el("div", {class: "chat"});
  const params = data.responses_create_params || {};
  if (!opts.outputOnly) {
    if (params.instructions) box.append(bubble("system", partText(params.instructions)));
    const inp = params.input;
    if (typeof inp === "string") box.append(bubble("user", inp));
    else if (Array.isArray(inp)) for (const m of inp) box.append(renderItem(m));
    box.append(el("div", {class: "divider"}, el("span", {}, "model output")));
  }
  const output = Array.isArray(data.output) ? data.output : [];
  if (!output.length) box.append(el("div", {class: "note"}, "No output recorded."));
  for (const item of output) box.append(renderItem(item));
  return box;
}

const SHOWN = new Set(["output"]);

function renderMetadata(data) {
  const table = el("table", {class: "meta"});
  const keys = Object.keys(data).filter((k) => !SHOWN.has(k)).sort((a, b) => {
    const rank = (k) => (k === "reward" ? 0 : k === "error" ? 1 : k === "_rollout" ? 3 : k === "responses_create_params" ? 4 : k === "response" ? 5 : 2);
    return rank(a) - rank(b) || a.localeCompare(b);
  });
  for (const key of keys) {
    let value = data[key];
    if (key === "responses_create_params" && value && typeof value === "object") {
      value = Object.assign({}, value);
      delete value.input;  // shown above as the conversation
    }
    let cell;
    if (value !== null && typeof value === "object") {
      const text = JSON.stringify(value, null, 2);
      const pre = el("pre", {}, text);
      cell = text.split("\n").length > 14 ? el("details", {}, el("summary", {}, `${Object.keys(value).length} fields`), pre) : pre;
    } else {
      cell = el("span", {}, fmt(value));
    }
    table.append(el("tr", {}, el("th", {}, key), el("td", {}, cell)));
  }
  return table;
}

function errorBox(err) {
  return el("div", {class: "errorbox"},
    el("div", {class: "etitle"}, `Failed at ${err.stage || "?"} · ${err.kind || "?"}`),
    el("div", {}, err.message || ""),
    el("div", {class: "emeta"}, `HTTP status ${fmt(err.http_status || null)} · attempts ${fmt(err.attempts === undefined ? null : err.attempts)}`));
}

function malformedBox(m, file) {
  return el("div", {class: "errorbox"},
    el("div", {class: "etitle"}, `Malformed line ${m.line}`),
    el("div", {}, `${file}:${m.line}: ${m.error}`),
    el("pre", {class: "raw"}, m.raw));
}

/* ---------- rollouts tab ---------- */

const state = {filter: "", search: "", failures: false, sort: "index", desc: false, offset: 0, limit: 50, selected: null};
let summary = null;

function renderCards(s) {
  const cards = $("#cards");
  cards.replaceChildren();
  const card = (label, value, attrs) => el("div", Object.assign({class: "card"}, attrs || {}), el("div", {class: "clabel"}, label), el("div", {class: "cvalue"}, value));
  cards.append(card("rollouts", fmt(s.rollouts), {class: "card", title: `${s.rows.toLocaleString()} non-blank lines`}), card("tasks", fmt(s.tasks)));
  for (const m of s.metrics) cards.append(card(`mean ${m}`, fmt(s.means[m])));
  const stages = Object.entries(s.failures_by_stage).map(([k, v]) => `${k}: ${v}`).join(", ");
  cards.append(card("failed", fmt(s.failed), {class: `card click ${s.failed ? "warn" : ""}`, title: stages || "no failures",
    onclick: () => { $("#f-failures").checked = true; applyForm(); }}));
  if (s.malformed) {
    cards.append(card("malformed lines", fmt(s.malformed), {class: "card click warn", onclick: () => { $("#f-failures").checked = true; applyForm(); }}));
  }
}

function renderHistogram(h) {
  const box = $("#hist");
  box.replaceChildren();
  const max = Math.max(1, ...h.counts);
  const n = h.counts.length;
  const width = (h.hi - h.lo) / n;
  const bars = el("div", {class: "bars"});
  h.counts.forEach((count, i) => {
    const lo = h.lo + i * width;
    const hi = lo + width;
    const last = i === n - 1;
    const label = `${fmt(lo)} ≤ reward ${last ? "≤" : "<"} ${fmt(hi)}: ${count.toLocaleString()} rollouts`;
    bars.append(el("div", {class: "bar", title: label, onclick: () => {
      $("#f-filter").value = `${fmt(lo)} <= reward ${last ? "<=" : "<"} ${fmt(hi)}`;
      applyForm();
    }}, el("div", {class: "fill", style: `height:${(100 * count) / max}%`})));
  });
  box.append(bars, el("div", {class: "axis"}, el("span", {}, fmt(h.lo)), el("span", {}, fmt((h.lo + h.hi) / 2)), el("span", {}, fmt(h.hi))));
}

function renderBanner(s) {
  const banner = $("#banner");
  if (!s.malformed) { banner.hidden = true; return; }
  banner.replaceChildren(el("b", {}, `${s.malformed} malformed line${s.malformed > 1 ? "s" : ""}`),
    " — not valid JSON rows; listed with their error: ",
    ...s.malformed_lines.slice(0, 8).map((m) => el("a", {href: "#", class: "jump", onclick: (e) => { e.preventDefault(); showRow(m.row); }},
      `${m.path.split("/").pop()}:${m.line}`)),
    s.malformed > 8 ? " …" : "");
  banner.hidden = false;
}

function headers() {
  const metrics = summary.metrics.filter((m) => m !== "reward");
  const cols = [["index", "#"], ["task", "task"], ["repeat", "rep"], ["reward", "reward"], ...metrics.map((m) => [m, m])];
  const tr = el("tr", {});
  for (const [key, label] of cols) {
    const arrow = state.sort === key ? (state.desc ? " ▼" : " ▲") : "";
    tr.append(el("th", {class: "sortable", "data-sort": key, onclick: () => {
      if (state.sort === key) state.desc = !state.desc; else { state.sort = key; state.desc = key !== "index" && key !== "task" && key !== "repeat"; }
      state.offset = 0; loadRows();
    }}, label + arrow));
  }
  tr.append(el("th", {}, "status"), el("th", {}, "answer / error"), el("th", {}, "prompt"));
  $("#rows thead").replaceChildren(tr);
  return metrics;
}

async function loadRows() {
  const metrics = headers();
  const q = new URLSearchParams({filter: state.filter, search: state.search, failures: state.failures ? "1" : "",
    sort: state.sort, desc: state.desc ? "1" : "", offset: state.offset, limit: state.limit});
  const body = $("#rows tbody");
  $("#f-error").textContent = "";
  let page;
  try { page = await api(`/api/rows?${q}`); } catch (e) { $("#f-error").textContent = e.message; return; }
  body.replaceChildren();
  if (!page.rows.length) body.append(el("tr", {}, el("td", {colspan: 7 + metrics.length, class: "empty"}, "No rollouts match.")));
  for (const r of page.rows) {
    const outcome = r.status === "malformed" ? el("span", {class: "mono"}, (r.error && r.error.message) || "")
      : r.status === "failed" ? el("span", {class: "errtext"}, (r.error && r.error.message) || "") : (r.answer || "");
    const tr = el("tr", {class: `row ${r.status} ${state.selected === r.row ? "selected" : ""}`, "data-row": r.row,
      title: `${r.file}:${r.line}`, onclick: () => showRow(r.row)},
      el("td", {class: "num"}, r.row), el("td", {class: "num"}, r.status === "malformed" ? "—" : r.task),
      el("td", {class: "num"}, r.status === "malformed" ? "—" : r.repeat), el("td", {}, rewardPill(r.reward)),
      ...metrics.map((m) => el("td", {class: "num"}, fmt(r.metrics[m]))),
      el("td", {}, statusBadge(r)), el("td", {class: "preview answer-col"}, outcome),
      el("td", {class: "preview"}, r.status === "malformed" ? "" : r.prompt || ""));
    body.append(tr);
  }
  const end = Math.min(page.total, state.offset + page.rows.length);
  $("#range").textContent = page.total ? `${(state.offset + 1).toLocaleString()}–${end.toLocaleString()} of ${page.total.toLocaleString()}` : "0 rollouts";
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = end >= page.total;
}

async function showRow(i) {
  state.selected = i;
  for (const tr of document.querySelectorAll("#rows tr.row")) tr.classList.toggle("selected", Number(tr.dataset.row) === i);
  const pane = $("#detail");
  let r;
  try { r = await api(`/api/rollout/${i}`); } catch (e) { pane.replaceChildren(el("div", {class: "form-error"}, e.message)); return; }
  pane.replaceChildren(renderRollout(r, {groupLink: true}));
  pane.scrollTop = 0;
}

function renderRollout(r, opts) {
  const file = r.file.split("/").pop();
  const box = el("div", {class: "rollout", "data-row": r.row});
  if (r.malformed) {
    box.append(el("h2", {}, `Row ${r.row}`), malformedBox(r.malformed, file));
    return box;
  }
  const d = r.data;
  box.append(el("div", {class: "rhead"},
    el("h2", {}, `Rollout ${r.row}`), rewardPill(r.reward), statusBadge({status: r.status, error: d.error}),
    el("div", {class: "where"}, `task ${r.task} · repeat ${r.repeat} · ${file}:${r.line}`),
    opts.groupLink ? el("button", {type: "button", class: "link", onclick: () => openGroup(r.task)}, `All repeats of task ${r.task} →`) : null));
  if (d.error && typeof d.error === "object") box.append(errorBox(d.error));
  box.append(el("h3", {}, "Conversation"), renderConversation(d), el("h3", {}, "Metadata"), renderMetadata(d));
  return box;
}

function applyForm() {
  state.filter = $("#f-filter").value.trim();
  state.search = $("#f-search").value.trim();
  state.failures = $("#f-failures").checked;
  state.offset = 0;
  switchTab("rollouts");
  loadRows();
}

/* ---------- groups tab ---------- */

const groupState = {sort: "spread", desc: true, offset: 0, limit: 50, task: null};

async function loadTasks() {
  const q = new URLSearchParams({sort: groupState.sort, desc: groupState.desc ? "1" : "", offset: groupState.offset, limit: groupState.limit});
  const page = await api(`/api/tasks?${q}`);
  $("#tasks thead").replaceChildren(el("tr", {}, ...["task", "n", "mean", "min", "max", "failed", "prompt"].map((h) => el("th", {}, h))));
  const body = $("#tasks tbody");
  body.replaceChildren();
  for (const t of page.tasks) {
    body.append(el("tr", {class: `row ${groupState.task === t.task ? "selected" : ""}`, "data-task": t.task, onclick: () => openGroup(t.task)},
      el("td", {class: "num"}, t.task), el("td", {class: "num"}, t.repeats), el("td", {}, rewardPill(t.mean)),
      el("td", {class: "num"}, fmt(t.min)), el("td", {class: "num"}, fmt(t.max)), el("td", {class: "num"}, t.failed || ""),
      el("td", {class: "preview"}, t.prompt)));
  }
  const end = Math.min(page.total, groupState.offset + page.tasks.length);
  $("#g-range").textContent = `${page.total ? groupState.offset + 1 : 0}–${end} of ${page.total.toLocaleString()} tasks`;
  $("#g-prev").disabled = groupState.offset === 0;
  $("#g-next").disabled = end >= page.total;
}

function groupColumns(rollouts, label, linkable) {
  const cols = el("div", {class: "columns"});
  for (const r of rollouts) {
    const d = r.data || {};
    cols.append(el("div", {class: `column ${r.status}`, "data-row": r.row},
      el("div", {class: "chead"}, el("b", {}, `${label || ""}repeat ${r.repeat}`), rewardPill(r.reward), statusBadge({status: r.status, error: d.error})),
      d.error && typeof d.error === "object" ? errorBox(d.error) : null,
      renderConversation(d, {outputOnly: true}),
      // Row ids belong to run A's index: run B's repeats have no row in the Rollouts tab.
      linkable === false ? null : el("button", {type: "button", class: "link", onclick: () => { switchTab("rollouts"); showRow(r.row); }}, "open as rollout →")));
  }
  return cols;
}

async function openGroup(task) {
  switchTab("groups");
  groupState.task = task;
  for (const tr of document.querySelectorAll("#tasks tr.row")) tr.classList.toggle("selected", Number(tr.dataset.task) === task);
  const pane = $("#group");
  let g;
  try { g = await api(`/api/group/${task}`); } catch (e) { pane.replaceChildren(el("div", {class: "form-error"}, e.message)); return; }
  const first = g.rollouts[0].data || {};
  const rewards = g.rollouts.map((r) => r.reward).filter((v) => v !== null);
  pane.replaceChildren(
    el("h2", {}, `Task ${task}`, el("span", {class: "sub"}, ` ${g.rollouts.length} repeats · rewards ${rewards.map(fmt).join(", ") || "—"}`)),
    el("div", {class: "prompt"}, promptOnly(first)),
    groupColumns(g.rollouts));
}

function promptOnly(data) {
  const chat = renderConversation({responses_create_params: data.responses_create_params || {}, output: []});
  chat.querySelectorAll(".divider, .note").forEach((n) => n.remove());
  return chat;
}

/* ---------- compare tab ---------- */

const cmpState = {sort: "abs_delta", desc: false, offset: 0, limit: 50};

async function loadCompare() {
  const pick = $("#c-pick");
  const files = await api("/api/compare/files");
  const select = el("select", {id: "c-file"}, el("option", {value: ""}, files.candidates.length ? "choose a run beside this file…" : "no other .jsonl file beside this one"),
    ...files.candidates.map((n) => el("option", {value: n, selected: files.current && files.current.endsWith("/" + n)}, n)));
  pick.replaceChildren(el("span", {}, files.current ? `Comparing with ${files.current}` : "Compare this run with another run over the same tasks:"), select,
    el("button", {type: "button", class: "primary", onclick: async () => {
      if (!select.value) return;
      try { await api("/api/compare", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({file: select.value})}); }
      catch (e) { pick.append(el("span", {class: "form-error"}, e.message)); return; }
      cmpState.offset = 0; loadCompare();
    }}, "Compare"));
  if (!files.current) { $("#c-cards").replaceChildren(); $("#ctable thead").replaceChildren(); $("#ctable tbody").replaceChildren(); return; }
  const q = new URLSearchParams({sort: cmpState.sort, desc: cmpState.desc ? "1" : "", offset: cmpState.offset, limit: cmpState.limit});
  const c = await api(`/api/compare?${q}`);
  const t = c.totals;
  const card = (label, value, cls) => el("div", {class: `card ${cls || ""}`}, el("div", {class: "clabel"}, label), el("div", {class: "cvalue"}, value));
  const delta = t.mean_a !== null && t.mean_b !== null ? t.mean_b - t.mean_a : null;
  $("#c-cards").replaceChildren(card("mean reward A", fmt(t.mean_a)), card("mean reward B", fmt(t.mean_b)),
    card("Δ B − A", delta === null ? "—" : (delta > 0 ? "+" : "") + fmt(delta), delta > 0 ? "good" : delta < 0 ? "warn" : ""),
    card("tasks better", fmt(t.better), "good"), card("tasks worse", fmt(t.worse), "warn"), card("unchanged", fmt(t.same)),
    card("only in A / B", `${t.only_a} / ${t.only_b}`));
  const head = el("tr", {});
  for (const [key, label] of [["task", "task"], ["mean_a", "A"], ["mean_b", "B"], ["delta", "Δ B − A"]]) {
    head.append(el("th", {class: "sortable", onclick: () => {
      if (cmpState.sort === key) cmpState.desc = !cmpState.desc; else { cmpState.sort = key; cmpState.desc = key !== "task"; }
      cmpState.offset = 0; loadCompare();
    }}, label + (cmpState.sort === key ? (cmpState.desc ? " ▼" : " ▲") : "")));
  }
  head.append(el("th", {}, "n A/B"), el("th", {}, "prompt"));
  $("#ctable thead").replaceChildren(head);
  const body = $("#ctable tbody");
  body.replaceChildren();
  for (const r of c.tasks) {
    const d = r.delta;
    const deltaCell = d === null ? "—" : el("span", {class: `delta ${d > 0 ? "up" : d < 0 ? "down" : ""}`}, (d > 0 ? "+" : "") + fmt(d));
    body.append(el("tr", {class: "row", "data-task": r.task, onclick: () => openCompareGroup(r.task)},
      el("td", {class: "num"}, r.task), el("td", {}, rewardPill(r.mean_a)), el("td", {}, rewardPill(r.mean_b)), el("td", {}, deltaCell),
      el("td", {class: "num"}, `${r.n_a + r.failed_a}/${r.n_b + r.failed_b}`), el("td", {class: "preview"}, r.prompt)));
  }
  const end = Math.min(c.total, cmpState.offset + c.tasks.length);
  $("#c-range").textContent = `${c.total ? cmpState.offset + 1 : 0}–${end} of ${c.total.toLocaleString()} tasks (sorted by ${cmpState.sort === "abs_delta" ? "largest change" : cmpState.sort})`;
  $("#c-prev").disabled = cmpState.offset === 0;
  $("#c-next").disabled = end >= c.total;
}

async function openCompareGroup(task) {
  const pane = $("#cgroup");
  const [a, b] = await Promise.all([api(`/api/group/${task}?run=a`).catch(() => null), api(`/api/group/${task}?run=b`).catch(() => null)]);
  const any = (a || b).rollouts[0].data || {};
  pane.replaceChildren(el("h2", {}, `Task ${task}`), el("div", {class: "prompt"}, promptOnly(any)),
    el("h3", {}, "Run A"), a ? groupColumns(a.rollouts, "A · ") : el("div", {class: "note"}, "not in run A"),
    el("h3", {}, "Run B"), b ? groupColumns(b.rollouts, "B · ", false) : el("div", {class: "note"}, "not in run B"));
}

/* ---------- wiring ---------- */

function switchTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".tabpane")) p.hidden = p.id !== `tab-${name}`;
  if (name === "groups" && !$("#tasks tbody").children.length) loadTasks();
  if (name === "compare") loadCompare();
}

async function init() {
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); applyForm(); });
  $("#f-failures").addEventListener("change", applyForm);
  $("#f-clear").addEventListener("click", () => { $("#f-filter").value = ""; $("#f-search").value = ""; $("#f-failures").checked = false; applyForm(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadRows(); });
  $("#next").addEventListener("click", () => { state.offset += state.limit; loadRows(); });
  $("#g-prev").addEventListener("click", () => { groupState.offset = Math.max(0, groupState.offset - groupState.limit); loadTasks(); });
  $("#g-next").addEventListener("click", () => { groupState.offset += groupState.limit; loadTasks(); });
  $("#g-sort").addEventListener("change", (e) => { const [s, d] = e.target.value.split(":"); groupState.sort = s; groupState.desc = d === "1"; groupState.offset = 0; loadTasks(); });
  $("#g-task").addEventListener("change", (e) => { if (e.target.value !== "") openGroup(Number(e.target.value)); });
  $("#c-prev").addEventListener("click", () => { cmpState.offset = Math.max(0, cmpState.offset - cmpState.limit); loadCompare(); });
  $("#c-next").addEventListener("click", () => { cmpState.offset += cmpState.limit; loadCompare(); });
  summary = await api("/api/summary");
  const files = summary.files.map((f) => f.split("/").pop()).join(" + ");
  $("#file").textContent = files;
  $("#file").title = summary.files.join("\n");
  document.title = `${summary.files[0].split("/").pop()} · rollgate viewer`;
  renderCards(summary);
  renderHistogram(summary.histogram);
  renderBanner(summary);
  await loadRows();
  document.body.dataset.ready = "1";
}

init().catch((e) => { $("#banner").hidden = false; $("#banner").textContent = `Could not load: ${e.message}`; });
