// Tightwad dashboard: the routes, the playground, the verify costs and the cluster, live.
// Data comes from the gateway's /dashboard/api/* endpoints with `Authorization: Bearer` when a
// key is set (asked once, kept in sessionStorage); streams are read with fetch (EventSource
// cannot send headers). Text from the server is only ever set as textContent.
(function () {
"use strict";

const { lineChart, barChart, fmt } = window.TightwadCharts;
const KEY = "tightwad.api_key";
const $ = (id) => document.getElementById(id);
const state = { routes: [], cluster: null, live: null, chat: null, messages: [], authFailed: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// --- auth and fetch --------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(res) {
  let message = `${res.status} ${res.statusText}`;
  try { message = (await res.json()).error.message || message; } catch (e) { /* not JSON */ }
  return new HttpError(res.status, message);
}

// Read a text/event-stream response; onFrame(obj) per `data:` frame; resolves at [DONE]/end.
async function readStream(res, onFrame) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of frame.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onFrame(JSON.parse(data));
      }
    }
  }
}

function askKey(message) {
  const dialog = $("login");
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  $("login-key").focus();
}

$("login-form").addEventListener("submit", () => {
  sessionStorage.setItem(KEY, $("login-key").value.trim());
  $("login-key").value = "";
  start();
});

async function start() {
  let res;
  try {
    res = await fetch("/dashboard/api/snapshot", { headers: headers() });
  } catch (e) {
    setLive(false, "gateway unreachable");
    setTimeout(start, 3000);
    return;
  }
  if (res.status === 401) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    $("main").hidden = true;
    askKey(had ? "That key was refused." : "");
    return;
  }
  if (!res.ok) {
    const err = await failure(res);
    setLive(false, err.message);
    return;
  }
  if ($("login").open) $("login").close();
  $("main").hidden = false;
  showRoutes(await res.json());
  follow();
}

// --- live updates ----------------------------------------------------------------------------

function setLive(on, why) {
  const pill = $("live");
  pill.className = `pill ${on ? "on" : "off"}`;
  pill.textContent = on ? "live" : (why || "disconnected");
}

async function follow() {
  if (state.live) state.live.abort();
  const ctl = new AbortController();
  state.live = ctl;
  let wait = 1000;
  while (!ctl.signal.aborted) {
    try {
      const res = await fetch("/dashboard/api/live", { headers: headers(), signal: ctl.signal });
      if (res.status === 401) { start(); return; }
      if (!res.ok) throw await failure(res);
      setLive(true);
      wait = 1000;
      await readStream(res, onLive);
    } catch (e) {
      if (ctl.signal.aborted) return;
      setLive(false, e.message && e.message.length < 40 ? e.message : "reconnecting");
    }
    setLive(false, "reconnecting");
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(10000, wait * 2);
  }
}

function onLive(msg) {
  if (msg.type === "routes") showRoutes(msg.data);
  else if (msg.type === "cluster") showCluster(msg.data);
  else if (msg.type === "event") addEvent(msg.data);
}

// --- routes ------------------------------------------------------------------------------------

const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)}%`);

function showRoutes(snap) {
  state.routes = snap.routes;
  $("uptime").textContent = `up ${duration(snap.uptime_s)}`;
  $("nav-cluster").hidden = !snap.controller;
  $("cluster").hidden = !snap.controller;
  const body = $("route-table").tBodies[0];
  body.replaceChildren(...snap.routes.map(routeRow));
  routeCharts(snap.routes);
  verifyCharts(snap.routes);
  routePicker(snap.routes);
}

function roundsCell(t) {
  if (!t.rounds) return el("td", { class: "num", "data-col": "rounds", text: "–" });
  return el("td", { class: "num", "data-col": "rounds", "data-rounds": t.rounds },
    el("div", { text: t.rounds }),
    el("div", { class: "sub", text: `${t.drafted} drafted, ${t.accepted} accepted` }));
}

function batchCell(b) {
  b = b || {};
  const known = (v) => v !== null && v !== undefined;
  const lines = [];
  if (known(b.live_runs)) {
    lines.push(el("div", { "data-batch": "live",
      text: `${b.live_runs} running` + (known(b.peak_live_runs) ? ` (peak ${b.peak_live_runs})` : "") }));
  }
  if (b.batching === false) {
    lines.push(el("div", { class: "sub", "data-batch": "steps", text: "engine batching off" }));
  } else if (known(b.sessions_per_step)) {
    const tokens = known(b.tokens_per_step) ? fmt(b.tokens_per_step) : "–";
    const now = known(b.recent_sessions_per_step) ? `; recently ${fmt(b.recent_sessions_per_step)} sessions per step` : "";
    const n = b.sessions_per_step;
    lines.push(el("div", { class: "sub", "data-batch": "steps",
      title: `${b.decodes} shared decodes; at most ${b.max_sessions_per_step} sessions and ${b.max_tokens_per_step} tokens in one${now}`,
      text: `${fmt(n)} session${n === 1 ? "" : "s"} · ${tokens} tokens per step` }));
  }
  if (!lines.length) return el("td", { "data-col": "batch", text: "–" });
  return el("td", { "data-col": "batch" }, ...lines);
}

function routeRow(r) {
  const t = r.totals || {};
  const verdict = el("div", {},
    el("span", { class: `on-off ${r.drafting.on ? "on" : "off"}`, text: r.drafting.on ? "on" : "off" }),
    el("div", { class: "why", text: r.drafting.why }));
  return el("tr", { "data-route": r.name },
    el("td", { "data-col": "route" }, el("strong", { text: r.name }), r.ready ? null : el("div", { class: "error", text: r.error || "not ready" })),
    el("td", { "data-col": "target", text: r.target }),
    el("td", { "data-col": "draft", text: r.draft || "–" }),
    el("td", { "data-col": "mode", text: r.draft_mode }),
    el("td", { class: "num", "data-col": "tok_s", text: fmt(r.tok_s) }),
    el("td", { class: "num", "data-col": "acceptance", text: pct(t.acceptance_rate) }),
    el("td", { class: "num", "data-col": "mean_accepted", text: t.mean_accepted_length ? fmt(t.mean_accepted_length) : "–" }),
    roundsCell(t),
    el("td", { "data-col": "drafting" }, verdict),
    batchCell(r.batch),
    el("td", { class: "num", "data-col": "in_flight", text: r.in_flight }),
    el("td", { class: "num", "data-col": "queued", text: r.queued }),
    el("td", { class: "num", "data-col": "errors", text: r.errors }));
}

function chartCard(container, id, title, keys) {
  let card = container.querySelector(`[data-chart="${CSS.escape(id)}"]`);
  if (!card) {
    card = el("div", { class: "chart", "data-chart": id },
      el("h4", { text: title }),
      document.createElementNS("http://www.w3.org/2000/svg", "svg"),
      el("div", { class: "key" }, ...keys.map((k, i) => el("span", { class: `k${i}`, text: k }))));
    container.append(card);
  }
  return card.querySelector("svg");
}

function prune(container, ids) {
  for (const card of [...container.children]) if (!ids.has(card.dataset.chart)) card.remove();
}

function routeCharts(routes) {
  const box = $("route-charts");
  prune(box, new Set(routes.map((r) => r.name)));
  for (const r of routes) {
    const s = r.series;
    const svg = chartCard(box, r.name, `${r.name}: tokens per second, last ${duration(s.tok_s.length * s.interval_s)}`,
      ["tok/s", "acceptance (right)"]);
    const n = s.tok_s.length;
    const step = Math.max(1, Math.round(60 / s.interval_s));
    const labels = [];
    for (let i = n - 1, m = 0; i >= 0; i -= step, m++) if (m % 2 === 0) labels.push([i, m ? `-${m}m` : "now"]);
    lineChart(svg, { series: [s.tok_s], right: [s.acceptance], xLabels: labels });
  }
}

function verifyCharts(routes) {
  const box = $("verify-charts");
  const measured = routes.filter((r) => Object.keys(r.verify_ms_by_width || {}).length);
  prune(box, new Set(measured.map((r) => r.name)));
  if (!measured.length && !box.querySelector(".muted")) {
    box.append(el("p", { class: "muted", text: "No route has measured its verify costs yet." }));
  } else if (measured.length) {
    for (const p of box.querySelectorAll("p.muted")) p.remove();
  }
  for (const r of measured) {
    const widths = Object.keys(r.verify_ms_by_width).map(Number).sort((a, b) => a - b);
    const ms = widths.map((w) => r.verify_ms_by_width[String(w)]);
    const copy = r.copy_drafts;
    const cut = copy === null || copy === undefined ? null : widths.indexOf(copy + 1);
    const svg = chartCard(box, r.name, `${r.name}: ms per verify by width` + (copy ? ` (copies cut at ${copy} drafts)` : ""),
      ["ms per forward pass", "ms per token (right)"]);
    barChart(svg, { labels: widths.map(String), values: ms, line: ms.map((v, i) => v / widths[i]), cut: cut >= 0 ? cut : null });
  }
}

function routePicker(routes) {
  const select = $("chat-route");
  const names = routes.map((r) => r.name);
  const have = [...select.options].map((o) => o.value);
  if (names.join("\n") === have.join("\n")) return;
  const keep = select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (names.includes(keep)) select.value = keep;
}

function duration(s) {
  if (s === undefined || s === null) return "";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// --- playground --------------------------------------------------------------------------------

$("chat-form").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
$("chat-stop").addEventListener("click", () => { if (state.chat) state.chat.abort(); });
$("chat-clear").addEventListener("click", () => {
  state.messages = [];
  $("chat-log").replaceChildren();
  $("chat-stats").replaceChildren();
});

async function send() {
  const text = $("chat-message").value.trim();
  if (!text || state.chat) return;
  state.messages.push({ role: "user", content: text });
  $("chat-log").append(el("div", { class: "msg user", text }));
  $("chat-message").value = "";
  const out = el("div", { class: "msg assistant" });
  $("chat-log").append(out);
  const body = {
    model: $("chat-route").value,
    messages: state.messages,
    temperature: Number($("chat-temperature").value),
    max_tokens: Number($("chat-max-tokens").value),
  };
  const prediction = $("chat-prediction").value;
  if (prediction) body.prediction = { type: "content", content: prediction };
  const ctl = new AbortController();
  state.chat = ctl;
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  let reply = "";
  let lastRound = -1;
  try {
    const res = await fetch("/dashboard/api/chat", {
      method: "POST", body: JSON.stringify(body), signal: ctl.signal,
      headers: headers({ "Content-Type": "application/json" }),
    });
    if (!res.ok) throw await failure(res);
    await readStream(res, (f) => {
      if (f.type === "delta") {
        const span = el("span", { class: `tok ${f.origin}`, "data-round": f.round, "data-tokens": f.tokens, text: f.text });
        if (f.round && f.round !== lastRound) span.classList.add("round-start");
        lastRound = f.round;
        span.title = `${f.origin}, round ${f.round || "–"}, ${f.tokens} token${f.tokens === 1 ? "" : "s"}`;
        out.append(span);
        reply += f.text;
      } else if (f.type === "finished") {
        showStats(f);
      } else if (f.type === "error") {
        out.append(el("span", { class: "error", text: f.error.message }));
      }
    });
  } catch (e) {
    if (e.name !== "AbortError") out.append(el("span", { class: "error", text: e.message }));
    else out.append(el("span", { class: "muted", text: " [stopped]" }));
    if (e.status === 401) start();
  } finally {
    state.chat = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
  if (reply) state.messages.push({ role: "assistant", content: reply });
  else state.messages.pop();
}

function showStats(f) {
  const s = f.stats;
  const items = [
    ["finish", f.finish_reason], ["mode", s.mode], ["tokens", f.usage.completion_tokens],
    ["rounds", s.rounds], ["drafted", s.drafted], ["accepted", s.accepted],
    ["acceptance", pct(s.drafted ? s.acceptance_rate : null)],
    ["mean accepted length", fmt(s.mean_accepted_length)], ["plain steps", s.plain_steps],
    ["draft ms", fmt(s.draft_ms)], ["verify ms", fmt(s.verify_ms)], ["prefill ms", fmt(s.prefill_ms)],
    ["cached prompt", s.cached_prompt_tokens],
  ];
  $("chat-stats").replaceChildren(...items.map(([k, v]) =>
    el("div", { "data-stat": k }, el("dt", { text: k }), el("dd", { text: v }))));
}

// --- cluster -----------------------------------------------------------------------------------

const GiB = 1024 ** 3;
const bytes = (b) => (b >= GiB ? `${(b / GiB).toFixed(1)} GiB` : `${Math.round(b / 1024 ** 2)} MiB`);

function showCluster(c) {
  state.cluster = c;
  $("cluster").hidden = false;
  $("nav-cluster").hidden = false;
  if (!c.reachable) {
    $("cluster-state").textContent = `controller ${c.address} unreachable: ${c.error}`;
    $("cluster-state").className = "error";
    return;
  }
  $("cluster-state").className = "muted";
  $("cluster-state").textContent = `${c.address} · v${c.version} · up ${duration(c.uptime_s)}`;
  $("nodes").replaceChildren(...c.nodes.map(nodeCard));
  $("deployments").replaceChildren(...(c.deployments.length
    ? c.deployments.map(deploymentRow) : [el("p", { class: "muted", text: "No deployments." })]));
}

function nodeCard(n) {
  return el("div", { class: "node", "data-node": n.id },
    el("header", {}, el("strong", { text: n.id }), el("span", { class: `state ${n.state}`, text: n.state })),
    el("div", { class: "muted", text: `${n.hostname} · ${n.address} · ${n.os}/${n.arch} · ${n.cpu_cores} cores · RAM ${bytes(n.ram_available_bytes)} free of ${bytes(n.ram_total_bytes)}` }),
    n.message ? el("div", { class: "muted", text: n.message }) : null,
    ...n.devices.map(deviceBar),
    n.processes.length ? el("div", { class: "muted", text: "processes: " + n.processes.map((p) => `${p.name} (${p.state})`).join(", ") }) : null);
}

function deviceBar(d) {
  const total = d.total_bytes || 1;
  const heldBytes = d.held.reduce((a, h) => a + h.bytes, 0);
  const track = el("div", { class: "bar-track", title: `${bytes(d.used_bytes)} used, ${bytes(d.free_bytes)} free` });
  d.held.forEach((h, i) => {
    const span = el("span", { class: `held${i % 2 ? " alt" : ""}`, title: `${h.model}: ${h.layers} layers, ${bytes(h.bytes)}` });
    span.style.width = `${Math.min(100, (100 * h.bytes) / total)}%`;
    track.append(span);
  });
  const other = el("span", { class: "other", title: "used by others" });
  other.style.width = `${Math.max(0, (100 * (d.used_bytes - heldBytes)) / total)}%`;
  track.append(other);
  return el("div", { class: "device", "data-device": d.id },
    el("div", {}, el("strong", { text: d.name || d.id }), " ",
      el("span", { class: "muted", text: `${d.backend} · ${bytes(d.used_bytes)} used / ${bytes(d.total_bytes)}` })),
    track);
}

function deploymentRow(dep) {
  const p = dep.placement;
  const parts = [el("div", {}, el("strong", { text: dep.model }), " ",
    el("span", { class: `state ${dep.state}`, text: dep.state }), " ",
    el("span", { class: "muted", text: `${dep.serve_mode} · ctx ${dep.ctx_size}${dep.message ? " · " + dep.message : ""}` }))];
  if (p && p.assignments.length) {
    const layers = p.assignments.reduce((a, x) => a + x.n_layers, 0) || 1;
    const split = el("div", { class: "split" });
    for (const a of p.assignments) {
      const span = el("span", { title: `${a.node_id}/${a.device_id}: layers ${a.first_layer}–${a.first_layer + a.n_layers - 1}, ${bytes(a.expected_bytes)}`,
        text: `${a.ggml_device || a.device_id} · ${a.n_layers}` });
      span.style.flexGrow = String(a.n_layers || 0.5);
      split.append(span);
    }
    parts.push(split, el("div", { class: "muted", text: `${layers} layers over ${p.assignments.length} device(s)${p.fits ? "" : " · does not fit: " + p.reason}` }));
  }
  return el("div", { class: "deployment", "data-deployment": dep.id }, ...parts);
}

function addEvent(e) {
  const list = $("events");
  if (list.querySelector(`[data-event="${e.id}"]`)) return;
  const when = new Date(e.time * 1000).toLocaleTimeString();
  list.prepend(el("li", { class: `lvl-${e.level}`, "data-event": e.id },
    el("time", { text: when }), el("strong", { text: e.kind }), el("span", { text: e.message })));
  while (list.children.length > 200) list.lastChild.remove();
}

// --- theme -------------------------------------------------------------------------------------

function applyTheme(t) {
  if (t) document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
}
applyTheme(localStorage.getItem("tightwad.theme"));
$("theme").addEventListener("click", () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem("tightwad.theme", next);
  applyTheme(next);
});

start();
})();
