// zeroserve dashboard: no external assets, no framework. Data comes from the gateway's JSON APIs
// with the bearer token the user pasted once (kept in sessionStorage, i.e. for this tab only).
"use strict";

const TOKEN_KEY = "zeroserve.token";
const REFRESH_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";

const CHARTS = [
  { id: "requests", title: "requests / s", unit: "/s",
    lines: [{ field: "requests_per_s", label: "requests/s", color: "#4fa3ff", area: true }] },
  { id: "latency", title: "latency", unit: "ms",
    lines: [{ field: "p50_ms", label: "p50", color: "#3ecf8e" },
            { field: "p99_ms", label: "p99", color: "#f5b942" }] },
  { id: "errors", title: "errors, % of requests", unit: "%", scale: 100,
    lines: [{ field: "error_rate", label: "server (5xx)", color: "#ff6b6b" },
            { field: "client_error_rate", label: "client (4xx)", color: "#c792ea" }] },
  { id: "replicas", title: "replicas", unit: "", step: true, integer: true,
    lines: [{ field: "replicas_desired", label: "desired", color: "#8593a3" },
            { field: "replicas_ready", label: "ready", color: "#3ecf8e", area: true }] },
  { id: "queue", title: "queue depth", unit: "", integer: true,
    lines: [{ field: "queue_depth", label: "queued", color: "#f5b942", area: true },
            { field: "in_flight", label: "in flight", color: "#4fa3ff" }] },
  { id: "cold_starts", title: "cold starts", unit: "", bars: true, integer: true,
    lines: [{ field: "cold_starts", label: "cold starts", color: "#c792ea" }] },
  { id: "cost", title: "cost", unit: "money",
    lines: [{ field: "cost", label: "accumulated", color: "#3ecf8e", area: true }] },
];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  selected: decodeURIComponent((location.hash.match(/endpoint=([^&]+)/) || [])[1] || ""),
  paused: false,
  currency: "USD",
  timer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// ---- formatting -------------------------------------------------------------------------------

function fmtNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (abs >= 1e3) return (value / 1e3).toFixed(1) + "k";
  if (abs >= 100 || Number.isInteger(value)) return value.toFixed(0);
  return value.toFixed(digits);
}

function fmtMoney(value) {
  if (value === null || value === undefined) return "–";
  const digits = value !== 0 && Math.abs(value) < 0.01 ? 5 : 2;
  return new Intl.NumberFormat(undefined, { style: "currency", currency: state.currency,
    minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
}

function fmtMs(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? (value / 1000).toFixed(2) + " s" : value.toFixed(value < 10 ? 2 : 0) + " ms";
}

function fmtPct(value) {
  return value === null || value === undefined ? "–" : (value * 100).toFixed(value < 0.1 ? 2 : 1) + "%";
}

function fmtValue(chart, value) {
  if (value === null || value === undefined) return "–";
  if (chart.unit === "money") return fmtMoney(value);
  if (chart.unit === "ms") return fmtMs(value);
  if (chart.unit === "%") return (value * 100).toFixed(1) + "%";
  return fmtNumber(value) + (chart.unit && chart.unit !== "" ? " " + chart.unit : "");
}

function fmtTime(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// ---- API --------------------------------------------------------------------------------------

class AuthError extends Error {}

// The axis says its unit: "250 ms", "1.5 s", "12%", "$0.02" — never a bare "5.4k".
function fmtAxis(chart, value) {
  if (chart.unit === "money") return fmtMoney(value);
  if (chart.unit === "ms") return value >= 1000 ? (value / 1000).toFixed(1) + " s" : fmtNumber(value, 1) + " ms";
  if (chart.unit === "%") return fmtNumber(value, 1) + "%";
  return fmtNumber(value, chart.integer ? 0 : 1);
}

async function api(path) {
  // Without a token the gateway may still answer (local --insecure-no-auth mode); a 401 asks for one.
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) {
    // Asked without a token (a first visit): sign in, no error. With one: say it was refused.
    throw new AuthError(state.token ? "the token was not accepted (wrong, revoked or expired)" : "");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

function setStatus(text, isError = false) {
  const node = $("status");
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// ---- overview ---------------------------------------------------------------------------------

function stateBadge(endpoint) {
  if (endpoint.state.config_update === "UPDATE_FAILED") return el("span", { class: "badge failed" }, "update failed");
  if (endpoint.scaled_to_zero) return el("span", { class: "badge idle" }, "scaled to zero");
  if (endpoint.state.ready === "READY") return el("span", { class: "badge ready" }, "ready");
  return el("span", { class: "badge not-ready" }, endpoint.state.config_update === "IN_PROGRESS" ? "updating" : "not ready");
}

function renderOverview(overview) {
  state.currency = overview.currency || "USD";
  const rows = $("overview-rows");
  rows.replaceChildren();
  $("no-endpoints").hidden = overview.endpoints.length > 0;
  for (const endpoint of overview.endpoints) {
    const replicas = endpoint.replicas;
    const cost = endpoint.cost;
    const row = el("tr", { dataset: { endpoint: endpoint.name } },
      el("td", {}, endpoint.name),
      el("td", {}, stateBadge(endpoint)),
      el("td", { class: "num" }, `${replicas.ready} / ${replicas.desired}` +
        (replicas.starting ? ` (+${replicas.starting} starting)` : "") +
        (replicas.draining ? ` (${replicas.draining} draining)` : "")),
      el("td", { class: "num" }, fmtNumber(endpoint.requests_per_s)),
      el("td", { class: "num" }, fmtMs(endpoint.p99_ms)),
      el("td", { class: "num" }, fmtPct(endpoint.error_rate)),
      el("td", { class: "num" }, fmtMoney(cost.total)),
      el("td", { class: "num" }, fmtMoney(cost.hourly_rate)),
      el("td", { class: "num" }, cost.per_1k_inferences === null ? "–" : fmtMoney(cost.per_1k_inferences)));
    if (endpoint.name === state.selected) row.classList.add("selected");
    row.addEventListener("click", () => select(endpoint.name));
    rows.append(row);
  }
  if (!state.selected && overview.endpoints.length) state.selected = overview.endpoints[0].name;
  if (state.selected && !overview.endpoints.some((e) => e.name === state.selected)) {
    state.selected = overview.endpoints.length ? overview.endpoints[0].name : "";
  }
  return overview.endpoints.find((e) => e.name === state.selected);
}

function select(name) {
  state.selected = name;
  history.replaceState(null, "", "#endpoint=" + encodeURIComponent(name));
  refresh();
}

// ---- charts -----------------------------------------------------------------------------------

function drawChart(chart, times, series, windowStart, windowEnd) {
  const width = 340, height = 150, left = 44, right = 8, top = 8, bottom = 20;
  const scale = chart.scale || 1;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": chart.title });
  const values = chart.lines.flatMap((line) => (series[line.field] || []).filter((v) => v !== null));
  let max = values.length ? Math.max(...values) * scale : 0;
  // Counts get whole-number gridlines (three steps); everything else some headroom.
  if (chart.integer) max = Math.max(3, Math.ceil(max / 3) * 3);
  else max = max > 0 ? max * 1.1 : 1;
  const x = (t) => left + ((t - windowStart) / Math.max(1, windowEnd - windowStart)) * (width - left - right);
  const y = (v) => top + (1 - (v * scale) / max) * (height - top - bottom);

  const grid = svg("g", { class: "grid" });
  const axis = svg("g", { class: "axis" });
  for (let i = 0; i <= 3; i++) {
    const value = (max * i) / 3;
    const py = top + (1 - i / 3) * (height - top - bottom);
    grid.append(svg("line", { x1: left, x2: width - right, y1: py, y2: py }));
    const label = svg("text", { x: left - 4, y: py + 3, "text-anchor": "end" });
    label.textContent = fmtAxis(chart, value);
    axis.append(label);
  }
  for (const fraction of [0, 0.5, 1]) {
    const t = windowStart + fraction * (windowEnd - windowStart);
    const label = svg("text", { x: x(t), y: height - 5,
      "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle" });
    label.textContent = fmtTime(t);
    axis.append(label);
  }
  root.append(grid, axis);

  let points = 0;
  for (const line of chart.lines) {
    const data = series[line.field] || [];
    if (chart.bars) {
      const barWidth = Math.max(1.5, ((width - left - right) / Math.max(1, windowEnd - windowStart)) * 5 * 0.8);
      data.forEach((value, index) => {
        if (value === null || value <= 0) return;
        points += 1;
        root.append(svg("rect", { x: x(times[index]) - barWidth / 2, y: y(value), width: barWidth,
          height: y(0) - y(value), fill: line.color }));
      });
      points += data.filter((v) => v === 0).length;
      continue;
    }
    // Runs of non-null values: a gap of one step (a sample that came late) is bridged, a longer one
    // (no traffic, no data) stays a gap. A value on its own is a dot, not a speck of line.
    const runs = [];
    let run = [];
    let missing = 0;
    data.forEach((value, index) => {
      if (value === null || value === undefined) { missing += 1; return; }
      if (missing > 1 && run.length) { runs.push(run); run = []; }
      missing = 0;
      points += 1;
      const px = x(times[index]), py = y(value);
      if (chart.step && run.length) run.push([px, run[run.length - 1][1]]);
      run.push([px, py]);
    });
    if (run.length) runs.push(run);
    for (const segment of runs) {
      if (segment.length === 1) {
        root.append(svg("circle", { class: "dot", fill: line.color, r: 2.5,
          cx: segment[0][0].toFixed(1), cy: segment[0][1].toFixed(1) }));
        continue;
      }
      const d = segment.map(([px, py], i) => (i ? "L" : "M") + px.toFixed(1) + "," + py.toFixed(1)).join("");
      if (line.area) {
        const base = y(0).toFixed(1);
        root.append(svg("path", { class: "area", fill: line.color,
          d: d + `L${segment[segment.length - 1][0].toFixed(1)},${base}L${segment[0][0].toFixed(1)},${base}Z` }));
      }
      root.append(svg("path", { class: "line", stroke: line.color, d }));
    }
  }
  if (!points) {
    const text = svg("text", { class: "nodata", x: width / 2, y: height / 2, "text-anchor": "middle" });
    text.textContent = "no data yet";
    root.append(text);
  }
  const latest = chart.lines.map((line) => {
    const data = series[line.field] || [];
    for (let i = data.length - 1; i >= 0; i--) if (data[i] !== null) return fmtValue(chart, data[i]);
    return "–";
  }).join(" / ");
  const legend = el("div", { class: "legend" }, ...chart.lines.map((line) => {
    const swatch = el("i");
    swatch.style.background = line.color;
    return el("span", {}, swatch, line.label);
  }));
  return el("figure", { class: "chart", dataset: { chart: chart.id, points: String(points) } },
    el("figcaption", {}, el("span", {}, chart.title), el("span", { class: "latest" }, latest)), root, legend);
}

function renderDetail(endpoint, data) {
  $("detail").hidden = false;
  $("detail-title").textContent = endpoint.name;
  const cost = endpoint.cost;
  const summary = $("detail-summary");
  summary.replaceChildren(
    "cost so far ", el("b", {}, fmtMoney(cost.total)),
    " · now ", el("b", {}, fmtMoney(cost.hourly_rate) + "/h"),
    endpoint.scaled_to_zero ? " (scaled to zero: idle costs nothing)" : "",
    " · ", el("b", {}, fmtNumber(cost.inferences, 0)), " inferences",
    " · per 1k ", el("b", {}, cost.per_1k_inferences === null ? "–" : fmtMoney(cost.per_1k_inferences)));
  const windowEnd = data.now;
  const windowStart = windowEnd - Number($("range").value);
  const times = data.series.t;
  $("charts").replaceChildren(...CHARTS.map((chart) => drawChart(chart, times, data.series, windowStart, windowEnd)));
  const reasons = $("reasons");
  reasons.replaceChildren();
  const events = data.scaling_events.slice().reverse();
  if (!events.length) reasons.append(el("tr", {}, el("td", { colspan: "4", class: "empty" }, "no scaling decisions yet")));
  for (const event of events.slice(0, 20)) {
    reasons.append(el("tr", {},
      el("td", {}, fmtTime(event.timestamp_ms / 1000)),
      el("td", {}, event.served_entity),
      el("td", { class: "num" }, event.previous === null ? String(event.desired) : `${event.previous} → ${event.desired}`),
      el("td", {}, event.reason)));
  }
}

// ---- refresh loop -----------------------------------------------------------------------------

async function refresh() {
  try {
    const overview = await api("/api/2.0/zeroserve/overview");
    showMain();
    const endpoint = renderOverview(overview);
    if (endpoint) {
      const since = Math.floor(Date.now() / 1000) - Number($("range").value);
      const data = await api(`/api/2.0/zeroserve/timeseries/${encodeURIComponent(endpoint.name)}?since=${since}`);
      renderDetail(endpoint, data);
    } else {
      $("detail").hidden = true;
    }
    setStatus("updated " + new Date().toLocaleTimeString() + (state.paused ? " (paused)" : ""));
  } catch (error) {
    if (error instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin(error.message);
    } else {
      setStatus("refresh failed: " + error.message, true);
    }
  }
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (!state.paused && document.visibilityState !== "hidden") await refresh();
    schedule();
  }, REFRESH_MS);
}

function showLogin(message) {
  $("main").hidden = true;
  $("controls").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  setStatus("signed out");
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("controls").hidden = false;
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem(TOKEN_KEY, state.token);
  refresh();
});
$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  showLogin();
});
$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "resume" : "pause";
  $("pause").setAttribute("aria-pressed", String(state.paused));
});
$("range").addEventListener("change", refresh);

refresh();
schedule();
