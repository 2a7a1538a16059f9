// ccproxy's built-in dashboard: the log API (/logs/*) drawn with uPlot. No build step.
// State for tests and curious users: <body data-ready>, each chart's data-series/data-points,
// the live table's data-rows.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const charts = {};
let key = "";
let refreshTimer = null;

function loadKey() {
  // A key may come in the fragment (never sent to the server, dropped from the address bar).
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    localStorage.setItem("ccproxy.key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  key = localStorage.getItem("ccproxy.key") || "";
  $("key").value = key;
}

class AuthError extends Error {}

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") url.searchParams.set(k, v);
  const resp = await fetch(url, { headers: key ? { "x-api-key": key } : {} });
  if (resp.status === 401) throw new AuthError("a client key is needed");
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${(await resp.text()).slice(0, 200)}`);
  return resp.json();
}

function bucketFor(windowSeconds) {
  if (windowSeconds <= 3600) return ["minute", 60];
  if (windowSeconds <= 2 * 86400) return ["hour", 3600];
  return ["day", 86400];
}

function epoch(iso) { return Math.floor(new Date(iso).getTime() / 1000); }

// rows grouped by `name(row)` -> aligned uPlot data over a continuous time axis.
function pivot(rows, name, value, since, step) {
  const start = Math.floor(since / step) * step;
  const end = Math.floor(Date.now() / 1000 / step) * step;
  const xs = [];
  for (let t = start; t <= end; t += step) xs.push(t);
  const index = new Map(xs.map((t, i) => [t, i]));
  const series = new Map();
  for (const row of rows) {
    const label = name(row);
    if (!series.has(label)) series.set(label, new Array(xs.length).fill(null));
    const i = index.get(epoch(row.bucket));
    if (i !== undefined) series.get(label)[i] = value(row);
  }
  return { xs, series };
}

// Small fractions (a few cents) keep two significant digits, so axis ticks never read alike.
function num(v, digits) {
  if (v === 0 || Number.isInteger(v)) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(0);
  if (digits === 0 || Math.abs(v) >= 1) return v.toFixed(1);
  return String(Number(v.toPrecision(2)));
}

function draw(id, pivoted, { bars = false, fillZero = true, digits = 0 } = {}) {
  const el = $(id);
  if (charts[id]) { charts[id].destroy(); delete charts[id]; }
  el.innerHTML = "";
  const names = [...pivoted.series.keys()];
  let points = 0;
  const data = [pivoted.xs];
  for (const label of names) {
    const ys = pivoted.series.get(label).map((v) => (v === null && fillZero ? 0 : v));
    points += ys.filter((v) => v !== null && v !== 0).length;
    data.push(ys);
  }
  el.dataset.series = String(names.length);
  el.dataset.points = String(points);
  if (!names.length || !points) {
    el.innerHTML = '<div class="empty">no requests in this window</div>';
    return;
  }
  const opts = {
    width: Math.max(300, el.clientWidth),
    height: 240,
    series: [{}, ...names.map((label, i) => ({
      label: label || "(none)",
      stroke: COLORS[i % COLORS.length],
      fill: bars ? COLORS[i % COLORS.length] + "55" : undefined,
      width: 2,
      paths: bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
      points: { show: pivoted.xs.length < 80 },
      spanGaps: !fillZero,
      value: (u, v) => (v == null ? "–" : num(v, digits)),
    }))],
    axes: [{}, { size: 70, values: (u, splits) => splits.map((v) => (v == null ? "" : num(v, digits))) }],
    legend: { live: true },
  };
  charts[id] = new uPlot(opts, data, el);
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillTable(id, rows, columns) {
  const body = $(id).querySelector("tbody");
  body.innerHTML = "";
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [get, cls] of columns) tr.appendChild(cell(get(row), cls));
    body.appendChild(tr);
  }
  $(id).dataset.rows = String(rows.length);
}

const fmt = {
  int: (n) => (n ?? 0).toLocaleString(),
  usd: (n) => "$" + (n ?? 0).toFixed(4),
  ms: (n) => (n == null || Number.isNaN(n) ? "–" : Math.round(n).toLocaleString()),
};

async function refresh() {
  const windowSeconds = Number($("window").value);
  const sinceEpoch = Math.floor(Date.now() / 1000) - windowSeconds;
  const since = new Date(sinceEpoch * 1000).toISOString();
  const [bucket, step] = bucketFor(windowSeconds);
  const [totals, overall, byModel, byKey, usage, errors] = await Promise.all([
    api("/logs/usage", { since, group_by: "none", bucket: "none" }),
    api("/logs/usage", { since, group_by: "none", bucket }),
    api("/logs/usage", { since, group_by: "model", bucket }),
    api("/logs/usage", { since, group_by: "key", bucket }),
    api("/logs/usage", { since, group_by: "key,model", bucket: "none" }),
    api("/logs/usage", { since, group_by: "error_type,status", bucket: "none", outcome: "error" }),
  ]);
  const t = totals.data[0] || {};
  $("total-requests").textContent = fmt.int(t.requests);
  $("total-errors").textContent = fmt.int(t.errors);
  $("total-tokens").textContent = `${fmt.int(t.input_tokens)} / ${fmt.int(t.output_tokens)}`;
  $("total-cost").textContent = fmt.usd(t.cost_usd);

  const requests = pivot(overall.data, () => "requests", (r) => r.requests, sinceEpoch, step);
  requests.series.set("errors", pivot(overall.data, () => "e", (r) => r.errors, sinceEpoch, step).series.get("e")
    || new Array(requests.xs.length).fill(0));
  draw("chart-requests", requests, { bars: true });
  draw("chart-cost", pivot(byModel.data, (r) => r.model, (r) => r.cost_usd, sinceEpoch, step), { digits: 4 });
  draw("chart-tokens", pivot(byKey.data, (r) => r.key_name || r.key_id,
    (r) => r.input_tokens + r.output_tokens, sinceEpoch, step));
  const latency = pivot([], () => "", () => 0, sinceEpoch, step);
  for (const [label, field] of [["p50", "duration_p50_ms"], ["p95", "duration_p95_ms"],
    ["ttft p50", "ttft_p50_ms"], ["ttft p95", "ttft_p95_ms"]]) {
    const one = pivot(overall.data, () => label, (r) => (Number.isFinite(r[field]) ? r[field] : null), sinceEpoch, step);
    latency.series.set(label, one.series.get(label) || new Array(latency.xs.length).fill(null));
  }
  draw("chart-latency", latency, { fillZero: false });

  fillTable("usage", usage.data, [
    [(r) => r.key_name || r.key_id], [(r) => r.model], [(r) => fmt.int(r.requests), "num"],
    [(r) => fmt.int(r.errors), "num"], [(r) => fmt.int(r.input_tokens), "num"],
    [(r) => fmt.int(r.output_tokens), "num"], [(r) => fmt.int(r.cache_read_tokens), "num"],
    [(r) => fmt.int(r.cache_write_tokens), "num"], [(r) => fmt.usd(r.cost_usd), "num"],
    [(r) => fmt.ms(r.duration_p95_ms), "num"],
  ]);
  fillTable("errors", errors.data, [[(r) => r.error_type || "(none)"], [(r) => r.status], [(r) => fmt.int(r.requests), "num"]]);
}

function liveRow(e) {
  const tr = document.createElement("tr");
  tr.className = e.outcome;
  tr.dataset.requestId = e.request_id;
  const cells = [
    new Date(e.finished_at).toLocaleTimeString(), e.key_name || e.key_id, e.mode, e.endpoint,
    e.model_used || e.model_requested, e.status, fmt.ms(e.duration_ms), fmt.ms(e.ttft_ms),
    fmt.int(e.input_tokens), fmt.int(e.output_tokens), fmt.usd(e.cost_usd),
  ];
  cells.forEach((v, i) => tr.appendChild(cell(String(v), i >= 5 ? "num" : "")));
  return tr;
}

function addLive(e, atTop = true) {
  const body = $("live").querySelector("tbody");
  if (body.querySelector(`tr[data-request-id="${e.request_id}"]`)) return;
  const tr = liveRow(e);
  if (atTop) body.prepend(tr); else body.appendChild(tr);
  while (body.children.length > 100) body.lastChild.remove();
  $("live").dataset.rows = String(body.children.length);
}

async function live() {
  const recent = await api("/logs/query", { limit: 50 });
  for (const e of recent.data) addLive(e, false);
  // fetch rather than EventSource: it can send the client key as a header.
  while (true) {
    try {
      const resp = await fetch("/logs/stream", { headers: key ? { "x-api-key": key } : {} });
      if (!resp.ok) throw new Error(`stream: ${resp.status}`);
      $("live-state").textContent = "(live)";
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const name = (frame.match(/^event: (.*)$/m) || [])[1];
          const data = (frame.match(/^data: (.*)$/m) || [])[1];
          if (name === "request" && data) {
            addLive(JSON.parse(data));
            clearTimeout(refreshTimer);
            refreshTimer = setTimeout(() => refresh().catch(showError), 1500);
          }
        }
      }
    } catch (err) {
      $("live-state").textContent = `(reconnecting: ${err.message})`;
    }
    await new Promise((r) => setTimeout(r, 3000));
  }
}

function showError(err) {
  $("status").textContent = err instanceof AuthError ? "enter your client key" : String(err.message || err);
}

async function start() {
  loadKey();
  $("key").addEventListener("change", () => {
    localStorage.setItem("ccproxy.key", $("key").value);
    location.reload();
  });
  $("window").addEventListener("change", () => refresh().catch(showError));
  try {
    await refresh();
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "1";
    setInterval(() => refresh().catch(showError), 30000);
    live().catch(showError);
  } catch (err) {
    showError(err);
    document.body.dataset.ready = "error";
  }
}

start();
