// The legacygpu dashboard: vanilla JS, no build step, nothing fetched from outside the facade.
//
// Design:
// - The token comes from the URL fragment (/ui#token=..., never sent to the server), is kept
//   in sessionStorage (this tab only) and removed from the address bar; without one, or when
//   the facade answers 401, the page shows an error and a token form, never data.
// - A full REST load fills the state (workers, recent tasks, summary, models); the WebSocket
//   /ws/cluster/events then keeps it live. Each (re)connection reloads everything, so events
//   missed while disconnected do not leave the page stale. Reconnects back off exponentially.
// - Events only mark the state dirty: rendering is coalesced (at most every RENDER_MS) and the
//   summary numbers are refetched at most every SUMMARY_MS, so a burst of thousands of task
//   events costs a handful of renders. A 2 s timer samples the summary for the chart.
// - Data reaches the DOM through textContent only (worker names and labels come from users).

import { ActivityChart } from "./chart.js";
import { DrawPad } from "./drawpad.js";

const PHASES = ["Pending", "Queued", "Scheduled", "Running", "Succeeded", "Failed", "Cancelled"];
const TERMINAL = new Set(["Succeeded", "Failed", "Cancelled"]);
const TOKEN_KEY = "legacygpu.token";
const MAX_TASKS = 25;
const RENDER_MS = 150;
const SUMMARY_MS = 1000;
const SAMPLE_MS = 2000;
const CHART_SAMPLES = 90;
const LABEL_FETCHES = 3;

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

const state = {
  token: null,
  workers: new Map(),
  tasks: new Map(),
  summary: null,
  models: new Map(),
  labels: new Map(), // task id -> {label, score} | null (not a classifier / no result)
  labelQueue: [],
  labelActive: 0,
  ws: null,
  retry: 0,
  retryTimer: null,
  sampleTimer: null,
  lastSample: null,
  generation: 0, // bumped on every (re)connect and auth failure: stale callbacks check it
};

// ---------------------------------------------------------------- formatting helpers

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
}

function fmtBytes(bytes) {
  if (!bytes) return "–";
  return `${(bytes / (1024 * 1024)).toFixed(0)} MiB`;
}

function fmtAgo(iso) {
  if (!iso) return "–";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function badge(text, kind) {
  const span = document.createElement("span");
  span.className = "badge";
  span.dataset.kind = kind;
  span.textContent = text;
  return span;
}

// ---------------------------------------------------------------- REST

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    let detail = "invalid token";
    try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
    throw new AuthError(detail);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string"
        ? body.detail
        : (body.detail || []).map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    } catch { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response.json();
}

// ---------------------------------------------------------------- auth

function readToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    const token = decodeURIComponent(match[1]);
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
    return token;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showTokenPanel() {
  $("token-panel").hidden = false;
  $("token-input").focus();
}

function authFailed(detail) {
  state.generation += 1;
  closeSocket();
  clearInterval(state.sampleTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  state.workers.clear();
  state.tasks.clear();
  state.summary = null;
  $("dashboard").hidden = true;
  const banner = $("auth-error");
  const command = document.createElement("code");
  command.textContent = "legacygpu cluster start";
  banner.replaceChildren(
    `The cluster rejected the token (401: ${detail}). Enter the token that `, command, " printed.",
  );
  banner.hidden = false;
  setConnection("offline", "not connected");
  showTokenPanel();
}

function handleError(err, what) {
  if (err instanceof AuthError) {
    authFailed(err.message);
    return;
  }
  console.warn(`${what} failed:`, err);
  setConnection("offline", `cannot reach the facade (${what})`);
}

// ---------------------------------------------------------------- loading

async function loadAll() {
  const generation = state.generation;
  const [workers, tasks, summary, models] = await Promise.all([
    api("/cluster/workers"),
    api(`/cluster/tasks?limit=${MAX_TASKS}`),
    api("/cluster/metrics"),
    api("/cluster/models"),
  ]);
  if (generation !== state.generation) return;
  state.workers = new Map(workers.data.map((w) => [w.id, w]));
  state.tasks = new Map(tasks.data.map((t) => [t.id, t]));
  state.summary = summary;
  state.models = new Map(models.data.map((m) => [m.name, m]));
  fillModelSelect();
  for (const task of state.tasks.values()) wantLabel(task);
  scheduleRender();
}

async function refreshSummary() {
  const generation = state.generation;
  try {
    const summary = await api("/cluster/metrics");
    if (generation === state.generation) {
      state.summary = summary;
      scheduleRender();
    }
    return summary;
  } catch (err) {
    if (generation === state.generation) handleError(err, "summary");
    return null;
  }
}

let summaryTimer = null;
let summaryLast = 0;
function requestSummary() {
  // Throttled: at most one fetch every SUMMARY_MS, the last request always served.
  if (summaryTimer) return;
  const wait = Math.max(0, summaryLast + SUMMARY_MS - Date.now());
  summaryTimer = setTimeout(() => {
    summaryTimer = null;
    summaryLast = Date.now();
    refreshSummary();
  }, wait);
}

async function sample() {
  const summary = await refreshSummary();
  if (!summary) return;
  const finished = ["Succeeded", "Failed", "Cancelled"].reduce((n, p) => n + (summary.tasks_by_phase[p] || 0), 0);
  const now = Date.now();
  const previous = state.lastSample;
  state.lastSample = { time: now, finished };
  if (!previous) return;
  const rate = Math.max(0, finished - previous.finished) / ((now - previous.time) / 1000);
  chart.push({ time: now, done: rate, queue: summary.queue_depth || 0 });
}

// ---------------------------------------------------------------- top-1 labels

function isClassifier(modelName) {
  const model = state.models.get(modelName);
  return Boolean(model && model.labels > 0);
}

function wantLabel(task) {
  if (task.phase !== "Succeeded" || state.labels.has(task.id)) return;
  if (!isClassifier(task.model)) {
    state.labels.set(task.id, null);
    return;
  }
  if (task.result) {
    state.labels.set(task.id, (task.result.top_k || [])[0] || null);
    return;
  }
  if (!state.labelQueue.includes(task.id)) state.labelQueue.push(task.id);
  pumpLabels();
}

function pumpLabels() {
  // Only rows on screen are worth a request; a burst of thousands of tasks scrolls most past unseen.
  const shown = new Set(newestTasks(MAX_TASKS).map((t) => t.id));
  while (state.labelActive < LABEL_FETCHES && state.labelQueue.length) {
    const id = state.labelQueue.shift();
    if (!shown.has(id) || state.labels.has(id)) continue;
    state.labelActive += 1;
    api(`/cluster/tasks/${encodeURIComponent(id)}`)
      .then((task) => {
        state.labels.set(id, ((task.result || {}).top_k || [])[0] || null);
        scheduleRender();
      })
      .catch((err) => handleError(err, "task result"))
      .finally(() => {
        state.labelActive -= 1;
        pumpLabels();
      });
  }
}

// ---------------------------------------------------------------- events

function setConnection(kind, text) {
  const pill = $("connection");
  pill.dataset.state = kind;
  pill.textContent = text;
}

function closeSocket() {
  clearTimeout(state.retryTimer);
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
    state.ws = null;
  }
}

function openSocket() {
  closeSocket();
  const generation = state.generation;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws/cluster/events?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  setConnection("connecting", "connecting…");
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "hello") {
      state.summary = event.object;
      setConnection("live", "live");
      // A reconnection: reload what the stream may have missed while it was down.
      if (state.retry > 0) loadAll().catch((err) => handleError(err, "reload"));
      state.retry = 0;
      scheduleRender();
      return;
    }
    onEvent(event);
  };
  ws.onclose = (close) => {
    if (generation !== state.generation) return;
    state.ws = null;
    if (close.code === 4401) {
      authFailed(close.reason || "the event stream refused the token");
      return;
    }
    const delay = Math.min(30000, 500 * 2 ** state.retry) * (0.75 + Math.random() / 2);
    state.retry += 1;
    setConnection("offline", `reconnecting in ${Math.ceil(delay / 1000)} s`);
    state.retryTimer = setTimeout(() => {
      if (generation === state.generation) openSocket();
    }, delay);
  };
}

function onEvent(event) {
  const obj = event.object || {};
  if (event.type.startsWith("task.")) {
    const known = state.tasks.get(obj.id);
    state.tasks.set(obj.id, known && known.result ? { ...obj, result: known.result } : obj);
    pruneTasks();
    wantLabel(obj);
    requestSummary();
  } else if (event.type === "worker.removed") {  // past the retention period: gone from the list
    state.workers.delete(obj.id);
    requestSummary();
  } else if (event.type.startsWith("worker.")) {
    state.workers.set(obj.id, obj);
    if (event.type !== "worker.heartbeat") requestSummary();
  }
  scheduleRender();
}

function pruneTasks() {
  if (state.tasks.size <= MAX_TASKS * 2) return;
  const keep = newestTasks(MAX_TASKS);
  state.tasks = new Map(keep.map((t) => [t.id, t]));
  for (const id of state.labels.keys()) if (!state.tasks.has(id)) state.labels.delete(id);
}

function newestTasks(n) {
  return [...state.tasks.values()]
    .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0))
    .slice(0, n);
}

// ---------------------------------------------------------------- rendering

let renderTimer = null;
function scheduleRender() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = null;
    render();
  }, RENDER_MS);
}

function render() {
  if (!state.summary) return;
  $("dashboard").hidden = false;
  renderSummary(state.summary);
  renderWorkers();
  renderTasks();
}

function renderSummary(summary) {
  const active = summary.workers_by_state.active || 0;
  const total = Object.values(summary.workers_by_state).reduce((a, b) => a + b, 0);
  $("stat-workers").textContent = `${active} / ${total}`;
  $("stat-queue").textContent = String(summary.queue_depth ?? 0);
  $("stat-throughput").textContent = `${(summary.throughput_per_second || 0).toFixed(2)} /s`;
  $("stat-p50").textContent = fmtMs(summary.latency_ms.p50);
  $("stat-p99").textContent = fmtMs(summary.latency_ms.p99);
  const health = $("cluster-health");
  health.dataset.state = active ? "ok" : "degraded";
  health.textContent = active ? "health: ok" : "health: no active worker";

  const list = $("phases");
  if (!list.childElementCount) {
    for (const phase of PHASES) {
      const li = document.createElement("li");
      li.dataset.phase = phase;
      const name = document.createElement("span");
      name.className = "phase-name";
      name.textContent = phase;
      const count = document.createElement("span");
      count.className = "phase-count";
      count.id = `phase-count-${phase}`;
      li.append(name, count);
      list.append(li);
    }
  }
  for (const phase of PHASES) {
    $(`phase-count-${phase}`).textContent = String(summary.tasks_by_phase[phase] ?? 0);
  }
}

function renderWorkers() {
  const tbody = $("workers-table").tBodies[0];
  const order = { active: 0, draining: 1, lost: 2, stopped: 3 };
  const workers = [...state.workers.values()].sort(
    (a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || a.name.localeCompare(b.name),
  );
  const rows = workers.map((w) => {
    const tr = document.createElement("tr");
    tr.dataset.workerId = w.id;
    tr.dataset.state = w.state;
    const device = w.device || {};
    const vram = device.vram_mib ? `, ${device.vram_mib} MiB` : "";
    const stats = w.stats || {};
    const name = cell(w.name, "worker-name");
    name.title = `${w.id} on ${w.host || "?"}, pid ${w.pid}`;
    const stateCell = cell("");
    stateCell.append(badge(w.state, w.state));
    tr.append(
      name,
      stateCell,
      cell(`${device.name || "?"} (${device.type || "?"}${vram})`),
      cell(device.backend),
      cell(w.assigned, "num"),
      cell(w.tasks_succeeded, "num"),
      cell(w.tasks_failed, "num"),
      cell(fmtMs(stats.recent_latency_ms), "num"),
      cell(fmtBytes(stats.memory_rss_bytes), "num"),
      cell(fmtAgo(w.last_heartbeat)),
    );
    return tr;
  });
  tbody.replaceChildren(...rows);
  $("workers-empty").hidden = rows.length > 0;
}

function renderTasks() {
  const tbody = $("tasks-table").tBodies[0];
  const rows = newestTasks(MAX_TASKS).map((t) => {
    const tr = document.createElement("tr");
    tr.dataset.taskId = t.id;
    tr.dataset.phase = t.phase;
    const phase = cell("", "phase");
    phase.append(badge(t.phase, t.phase));
    if (t.reason && t.phase !== "Succeeded" && TERMINAL.has(t.phase)) phase.title = `${t.reason}: ${t.message || ""}`;
    const worker = t.worker_id ? (state.workers.get(t.worker_id) || {}).name || t.worker_id : "";
    const top = state.labels.get(t.id);
    const topText = top ? `${top.label} (${(top.score * 100).toFixed(1)}%)` : t.phase === "Succeeded" && isClassifier(t.model) ? "…" : "";
    tr.append(
      cell(t.id, "mono"),
      cell(t.model),
      phase,
      cell(worker),
      cell(t.attempts, "num"),
      cell(fmtMs(t.latency_ms), "num"),
      cell(topText, "top1"),
    );
    return tr;
  });
  tbody.replaceChildren(...rows);
  $("tasks-empty").hidden = rows.length > 0;
}

// ---------------------------------------------------------------- submitting

function fillModelSelect() {
  const select = $("model-select");
  const current = select.value;
  const options = [...state.models.values()].map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.description ? `${m.name}: ${m.description}` : m.name;
    return option;
  });
  select.replaceChildren(...options);
  if (state.models.has(current)) select.value = current;
}

function readFileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function showSubmitMessage(text, kind) {
  const box = $("submit-result");
  box.dataset.kind = kind;
  box.replaceChildren(document.createTextNode(text));
  return box;
}

async function submitTask(event) {
  event.preventDefault();
  const model = state.models.get($("model-select").value);
  if (!model) return showSubmitMessage("Choose a model.", "error");
  const imageInput = (model.inputs || []).find((i) => i.image);
  if (!imageInput) return showSubmitMessage(`Model ${model.name} takes no image input; use the CLI or the API.`, "error");
  const file = $("image-input").files[0];
  if (!file && !drawpad.drawn) return showSubmitMessage("Choose an image file or draw a digit first.", "error");
  const button = $("submit-button");
  button.disabled = true;
  try {
    const data = file ? await readFileBase64(file) : drawpad.pngBase64();
    const task = await api("/cluster/tasks/submit", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: model.name,
        inputs: [{ name: imageInput.name, shape: [1], datatype: "BYTES", data: [data] }],
      }),
    });
    showSubmitMessage(`Submitted ${task.id}: ${task.phase}…`, "pending");
    await followTask(task.id);
  } catch (err) {
    if (err instanceof AuthError) authFailed(err.message);
    else showSubmitMessage(`Not submitted: ${err.message}`, "error");
  } finally {
    button.disabled = false;
  }
}

async function followTask(id) {
  const deadline = Date.now() + 120000;
  while (Date.now() < deadline) {
    const task = await api(`/cluster/tasks/${encodeURIComponent(id)}`);
    if (TERMINAL.has(task.phase)) return showTaskResult(task);
    showSubmitMessage(`Task ${id}: ${task.phase}…`, "pending");
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  showSubmitMessage(`Task ${id} is still not finished; follow it in the table.`, "pending");
}

function showTaskResult(task) {
  if (task.phase !== "Succeeded") {
    return showSubmitMessage(`Task ${task.id}: ${task.phase} (${task.reason}: ${task.message})`, "error");
  }
  const topK = (task.result || {}).top_k || [];
  state.labels.set(task.id, topK[0] || null);
  scheduleRender();
  const box = showSubmitMessage(`Task ${task.id} succeeded in ${fmtMs(task.latency_ms)}.`, "ok");
  if (topK.length) {
    const best = document.createElement("p");
    best.className = "prediction";
    best.append("Prediction: ");
    const label = document.createElement("strong");
    label.id = "prediction-label";
    label.textContent = topK[0].label;
    best.append(label);
    const list = document.createElement("ol");
    list.className = "topk";
    for (const entry of topK) {
      const li = document.createElement("li");
      li.textContent = `${entry.label}: ${(entry.score * 100).toFixed(2)}%`;
      list.append(li);
    }
    box.append(best, list);
  }
  return box;
}

// ---------------------------------------------------------------- start

async function connect() {
  state.generation += 1;
  state.lastSample = null;
  clearInterval(state.sampleTimer);
  $("auth-error").hidden = true;
  setConnection("connecting", "connecting…");
  try {
    await loadAll();
  } catch (err) {
    handleError(err, "loading");
    if (err instanceof AuthError) return;
  }
  $("token-panel").hidden = true;
  openSocket();
  state.sampleTimer = setInterval(sample, SAMPLE_MS);
  sample();
}

const chart = new ActivityChart($("chart"), CHART_SAMPLES);
const drawpad = new DrawPad($("draw-canvas"));

$("draw-clear").addEventListener("click", () => drawpad.clear());
$("submit-form").addEventListener("submit", submitTask);
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  connect();
});
$("change-token").addEventListener("click", showTokenPanel);
window.addEventListener("hashchange", () => {
  const token = readToken();
  if (token && token !== state.token) {
    state.token = token;
    connect();
  }
});

state.token = readToken();
if (state.token) {
  connect();
} else {
  setConnection("offline", "no token");
  showTokenPanel();
}
