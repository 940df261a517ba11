// Twinlake's console: the fleet, one gateway, a SQL editor and ingest health, from the HTTP API
// the same server answers (`/api/v1/query`, `/metrics`). Everything a device or a query sends
// back is inserted as text, never as markup.
"use strict";

// ---- the API ---------------------------------------------------------------------------------

class QueryError extends Error {}

// Runs `sql` and returns its rows (objects, times as RFC 3339 text).
async function query(sql) {
  const response = await fetch("/api/v1/query", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sql, format: "json" }),
  });
  const text = await response.text();
  if (!response.ok) throw new QueryError(errorText(text, response.status));
  return JSON.parse(text);
}

// Runs `sql` and hands its rows to `onRows` as they arrive (newline-delimited JSON).
async function queryStream(sql, onRows) {
  const response = await fetch("/api/v1/query", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sql, format: "ndjson" }),
  });
  if (!response.ok) throw new QueryError(errorText(await response.text(), response.status));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    pending += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = pending.split("\n");
    pending = done ? "" : lines.pop();
    const rows = lines.filter((line) => line.trim()).map((line) => JSON.parse(line));
    if (rows.length) onRows(rows);
    if (done) return;
  }
}

function errorText(body, status) {
  try {
    return JSON.parse(body).error || body;
  } catch {
    return body || `HTTP ${status}`;
  }
}

// A SQL string literal.
function lit(text) {
  return "'" + String(text).replaceAll("'", "''") + "'";
}

function timestamp(ms) {
  return `TIMESTAMP ${lit(new Date(ms).toISOString())}`;
}

// ---- the page ----------------------------------------------------------------------------------

// An element: el("td", {class: "num"}, "text", child, ...). Strings become text nodes.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...children) {
  const page = document.getElementById("page");
  page.replaceChildren(...children);
  return page;
}

function failure(error) {
  return el("div", { class: "error", "data-error": "" }, error.message || String(error));
}

function cell(value) {
  if (value === null || value === undefined) return el("td", { class: "muted" }, "–");
  if (typeof value === "number") return el("td", { class: "num" }, formatNumber(value));
  if (typeof value === "object") return el("td", {}, JSON.stringify(value));
  return el("td", {}, value);
}

function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : Number(value.toPrecision(6)).toString();
}

function table(columns, rows, { header = columns, cells = (row, c) => cell(row[c]) } = {}) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, header.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map((c) => cells(row, c))))),
  );
}

function ago(time) {
  if (!time) return "never";
  const seconds = Math.round((Date.now() - Date.parse(time)) / 1000);
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

// The twin's JSON value as text: a string unquoted, anything else as JSON.
function twinText(value) {
  if (value === null || value === undefined) return null;
  try {
    const parsed = JSON.parse(value);
    return typeof parsed === "string" ? parsed : JSON.stringify(parsed);
  } catch {
    return value;
  }
}

// ---- fleet -------------------------------------------------------------------------------------

const FLEET_PAGE = 50;
const FLEET_COLUMNS = [
  ["gateway", "gateway"],
  ["last_seen", "last seen"],
  ["services_down", "services"],
  ["alarms", "active alarms"],
  ["depot", "depot"],
  ["firmware", "firmware"],
];

// One page of gateways with their state, searched and sorted on the server.
function fleetSql({ search, sort, descending, page }) {
  const where = search
    ? `WHERE gateway ILIKE ${lit("%" + search + "%")} OR depot ILIKE ${lit("%" + search + "%")} ` +
      `OR firmware ILIKE ${lit("%" + search + "%")}`
    : "";
  const order = sort === "alarms" ? "critical DESC, major DESC, minor DESC, warning" : sort;
  const direction = descending ? "DESC" : "ASC";
  return `WITH seen AS (
  SELECT gateway, max(time) AS last_seen FROM latest GROUP BY gateway
), services AS (
  SELECT gateway, count(*) FILTER (WHERE status = 'up') AS services_up,
         count(*) FILTER (WHERE status <> 'up') AS services_down
  FROM health_current GROUP BY gateway
), alarms AS (
  SELECT gateway,
         count(*) FILTER (WHERE severity = 'critical') AS critical,
         count(*) FILTER (WHERE severity = 'major') AS major,
         count(*) FILTER (WHERE severity = 'minor') AS minor,
         count(*) FILTER (WHERE severity = 'warning') AS warning
  FROM alarms_active GROUP BY gateway
), twin_of_gateway AS (
  SELECT gateway,
         max(CASE WHEN fragment = 'depot' THEN json_get_str(value) END) AS depot,
         max(CASE WHEN fragment = 'firmware' THEN json_get_str(value, 'version') END) AS firmware
  FROM twin WHERE entity = gateway GROUP BY gateway
), fleet AS (
  SELECT g.gateway, s.last_seen,
         coalesce(v.services_up, 0) AS services_up, coalesce(v.services_down, 0) AS services_down,
         coalesce(a.critical, 0) AS critical, coalesce(a.major, 0) AS major,
         coalesce(a.minor, 0) AS minor, coalesce(a.warning, 0) AS warning,
         t.depot, t.firmware
  FROM gateways g
  LEFT JOIN seen s ON s.gateway = g.gateway
  LEFT JOIN services v ON v.gateway = g.gateway
  LEFT JOIN alarms a ON a.gateway = g.gateway
  LEFT JOIN twin_of_gateway t ON t.gateway = g.gateway
)
SELECT *, count(*) OVER () AS total FROM fleet
${where}
ORDER BY ${order} ${direction} NULLS LAST, gateway
LIMIT ${FLEET_PAGE} OFFSET ${page * FLEET_PAGE}`;
}

async function fleetPage(params) {
  const state = {
    search: params.get("search") || "",
    sort: FLEET_COLUMNS.some(([c]) => c === params.get("sort")) ? params.get("sort") : "gateway",
    descending: params.get("order") === "desc",
    page: Math.max(0, Number(params.get("page")) || 0),
  };
  const go = (change) => {
    const next = { ...state, ...change };
    const search = new URLSearchParams({
      search: next.search, sort: next.sort, order: next.descending ? "desc" : "asc", page: next.page,
    });
    location.hash = "#/fleet?" + search;
  };
  const input = el("input", { type: "search", placeholder: "gateway, depot or firmware", value: state.search, id: "fleet-search" });
  input.addEventListener("change", () => go({ search: input.value, page: 0 }));
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  show(el("h1", {}, "Fleet"), el("div", { class: "toolbar" }, input), body);

  let rows;
  try {
    rows = await query(fleetSql(state));
  } catch (error) {
    body.replaceChildren(failure(error));
    return;
  }
  const total = rows.length ? rows[0].total : 0;
  const header = FLEET_COLUMNS.map(([column, label]) => {
    const sorted = state.sort === column;
    const th = el("th", { class: `sortable${sorted ? " sorted" : ""}${sorted && !state.descending ? " asc" : ""}` }, label);
    th.addEventListener("click", () => go({ sort: column, descending: sorted ? !state.descending : false, page: 0 }));
    return th;
  });
  const tbody = el("tbody", {}, rows.map((row) => el("tr", { "data-gateway": row.gateway },
    el("td", {}, el("a", { href: `#/gateway/${encodeURIComponent(row.gateway)}` }, row.gateway)),
    el("td", { title: row.last_seen || "" }, ago(row.last_seen)),
    el("td", {}, el("span", { class: "up" }, `${row.services_up} up`), row.services_down ? el("span", { class: "down" }, ` ${row.services_down} down`) : null),
    el("td", { "data-alarms": row.critical + row.major + row.minor + row.warning }, severityBadges(row)),
    cell(row.depot),
    cell(row.firmware),
  )));
  const pages = Math.max(1, Math.ceil(total / FLEET_PAGE));
  body.replaceChildren(
    el("table", { id: "fleet" }, el("thead", {}, el("tr", {}, header)), tbody),
    el("div", { class: "toolbar" },
      el("button", { class: "plain", disabled: state.page === 0, onclick: () => go({ page: state.page - 1 }) }, "‹ previous"),
      el("span", { class: "muted", id: "fleet-count" }, `page ${state.page + 1} of ${pages} · ${total} gateways`),
      el("button", { class: "plain", disabled: state.page + 1 >= pages, onclick: () => go({ page: state.page + 1 }) }, "next ›")),
  );
}

function severityBadges(counts) {
  return ["critical", "major", "minor", "warning"]
    .filter((severity) => counts[severity] > 0)
    .map((severity) => el("span", { class: `badge ${severity}`, title: severity }, counts[severity]));
}

// ---- one gateway -------------------------------------------------------------------------------

async function gatewayPage(gateway, params) {
  const at = params.get("at");
  const atInput = el("input", { type: "datetime-local", step: "1", value: at ? at.slice(0, 19) : "" });
  const atButton = el("button", { class: "plain", onclick: () => {
    const value = atInput.value ? new Date(atInput.value + "Z").toISOString() : "";
    location.hash = `#/gateway/${encodeURIComponent(gateway)}` + (value ? "?" + new URLSearchParams({ at: value }) : "");
  } }, "show the tree at this time (UTC)");
  const sections = {
    tree: el("section", { class: "card tree", id: "tree" }, el("p", { class: "muted" }, "Loading…")),
    latest: el("section", { class: "card", id: "latest" }),
    chart: el("section", { class: "card", id: "chart" }),
    twin: el("section", { class: "card", id: "twin" }),
    alarms: el("section", { class: "card", id: "alarms" }),
    timeline: el("section", { class: "card timeline", id: "timeline" }),
  };
  show(
    el("h1", {}, "Gateway ", el("span", { id: "gateway-name" }, gateway)),
    el("div", { class: "toolbar" }, atInput, atButton, at ? el("a", { href: `#/gateway/${encodeURIComponent(gateway)}` }, "now") : null),
    el("div", { class: "grid" },
      el("div", {}, sections.tree, sections.twin),
      el("div", {}, sections.chart, sections.latest, sections.alarms, sections.timeline)),
  );
  const g = lit(gateway);
  const load = async (section, title, sql, render) => {
    try {
      const rows = await query(sql);
      section.replaceChildren(el("h2", {}, title), render(rows));
    } catch (error) {
      section.replaceChildren(el("h2", {}, title), failure(error));
    }
  };
  const entities = at ? `entities_at(${timestamp(Date.parse(at))})` : "entities";
  let selectSeries;
  await Promise.all([
    load(sections.tree, at ? `Devices and services at ${at}` : "Devices and services now",
      `SELECT entity, parent, kind, name, type FROM ${entities} WHERE gateway = ${g} ORDER BY entity`,
      (rows) => tree(rows)),
    load(sections.latest, "Latest values",
      `SELECT entity, type, series, time, value FROM latest WHERE gateway = ${g} ORDER BY entity, type, series`,
      (rows) => {
        const list = table(["entity", "type", "series", "time", "value"], rows, {
          cells: (row, c) => c === "series"
            ? el("td", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); selectSeries(row); } }, row.series))
            : cell(row[c]),
        });
        selectSeries = (row) => seriesChart(sections.chart, gateway, row, rows);
        if (rows.length) selectSeries(rows.find((r) => r.entity === gateway) || rows[0]);
        else sections.chart.replaceChildren(el("h2", {}, "Chart"), el("p", { class: "muted" }, "No measurements yet."));
        return list;
      }),
    load(sections.twin, "Twin data",
      `SELECT entity, fragment, value, updated_at FROM twin WHERE gateway = ${g} ORDER BY entity, fragment`,
      (rows) => table(["entity", "fragment", "value", "updated_at"], rows, {
        header: ["entity", "fragment", "value", "updated"],
        cells: (row, c) => cell(c === "value" ? twinText(row.value) : row[c]),
      })),
    load(sections.alarms, "Active alarms",
      `SELECT entity, type, severity, text, first_raised, last_updated, count FROM alarms_active WHERE gateway = ${g} ORDER BY last_updated DESC`,
      (rows) => rows.length ? table(["severity", "entity", "type", "text", "first_raised", "last_updated", "count"], rows, {
        cells: (row, c) => c === "severity" ? el("td", {}, el("span", { class: `badge ${row.severity}` }, row.severity)) : cell(row[c]),
      }) : el("p", { class: "muted" }, "None.")),
    load(sections.timeline, "Alarms and events, newest first",
      `SELECT time, entity, 'alarm' AS kind, type, severity, status, text FROM alarms WHERE gateway = ${g}
       UNION ALL
       SELECT time, entity, 'event' AS kind, type, NULL AS severity, NULL AS status, text FROM events WHERE gateway = ${g}
       ORDER BY time DESC LIMIT 100`,
      (rows) => table(["time", "kind", "entity", "type", "severity", "status", "text"], rows)),
  ]);
}

// The devices and services of a gateway as nested lists, from (entity, parent) rows.
function tree(rows) {
  const children = new Map();
  const known = new Set(rows.map((r) => r.entity));
  for (const row of rows) {
    const parent = known.has(row.parent) ? row.parent : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(row);
  }
  const list = (parent) => el("ul", {}, (children.get(parent) || []).map((row) =>
    el("li", { "data-entity": row.entity },
      row.name || row.entity, " ", el("span", { class: "kind" }, [row.kind, row.type].filter(Boolean).join(" · ")),
      children.has(row.entity) ? list(row.entity) : null)));
  return rows.length ? list(null) : el("p", { class: "muted" }, "No entities.");
}

// The series' values over a range, reduced on the server to the chart's width (lowest,
// highest and mean per pixel column), with the entity's alarms from raised to cleared behind.
async function seriesChart(section, gateway, series, allSeries) {
  const now = Date.parse(series.time) || Date.now();
  const fromInput = el("input", { type: "datetime-local", step: "1", value: new Date(now - 3600e3).toISOString().slice(0, 19) });
  const toInput = el("input", { type: "datetime-local", step: "1", value: new Date(now + 1000).toISOString().slice(0, 19) });
  const picker = el("select", {}, allSeries.map((s, i) => el("option", { value: i, selected: s === series }, `${s.entity} · ${s.type} · ${s.series}`)));
  picker.addEventListener("change", () => seriesChart(section, gateway, allSeries[picker.value], allSeries));
  const canvas = el("canvas", { class: "chart", id: "series-chart" });
  const links = el("div", { class: "toolbar" });
  const note = el("p", { class: "muted" });
  const redraw = () => drawSeries(canvas, series, Date.parse(fromInput.value + "Z"), Date.parse(toInput.value + "Z"), links, note);
  section.replaceChildren(
    el("h2", {}, "Chart"),
    el("div", { class: "toolbar" }, picker, "from", fromInput, "to", toInput, "(UTC)", el("button", { onclick: redraw }, "draw")),
    canvas, note, links);
  await redraw();
}

async function drawSeries(canvas, series, from, to, links, note) {
  const width = Math.max(100, canvas.clientWidth || 800);
  const bucket = Math.max(1, Math.ceil((to - from) / width));
  const where = `entity = ${lit(series.entity)} AND type = ${lit(series.type)} AND series = ${lit(series.series)}
  AND time >= ${timestamp(from)} AND time < ${timestamp(to)}`;
  const raw = `SELECT time, value FROM measurements\nWHERE ${where}\nORDER BY time`;
  const reduced = `SELECT date_bin(INTERVAL '${bucket} milliseconds', time, TIMESTAMP '1970-01-01T00:00:00Z') AS t,
  min(value) AS low, max(value) AS high, avg(value) AS mean, count(*) AS n
FROM measurements WHERE ${where} GROUP BY 1 ORDER BY 1`;
  const alarms = `SELECT type, severity, status, time FROM alarms
WHERE entity = ${lit(series.entity)} AND time < ${timestamp(to)} ORDER BY time`;
  try {
    const [buckets, alarmRows] = await Promise.all([query(reduced), query(alarms)]);
    const points = buckets.map((b) => [Date.parse(b.t), b.mean]);
    const band = buckets.map((b) => [Date.parse(b.t), b.low, b.high]);
    const regions = alarmRegions(alarmRows, from, to);
    TwinlakeChart.draw(canvas, { lines: [{ name: `${series.series} (${series.entity})`, points, band }], regions, from, to });
    const values = buckets.reduce((sum, b) => sum + b.n, 0);
    note.replaceChildren(`${values} values in ${buckets.length} columns of ${bucket} ms; ${regions.length} alarm regions.`);
  } catch (error) {
    note.replaceChildren(failure(error));
  }
  links.replaceChildren(
    el("a", { href: "#/sql?" + new URLSearchParams({ q: raw }), id: "open-sql" }, "open as a SQL query"),
    el("a", { href: "/api/v1/query?" + new URLSearchParams({ sql: raw, format: "parquet" }), download: "series.parquet" }, "download as Parquet"),
    el("a", { href: "/api/v1/query?" + new URLSearchParams({ sql: raw, format: "csv" }), download: "series.csv" }, "CSV"));
}

// Alarm rows (by time) to regions: a raise opens its type's region, a clear closes it.
function alarmRegions(rows, from, to) {
  const open = new Map();
  const regions = [];
  for (const row of rows) {
    const time = Date.parse(row.time);
    if (row.status === "raised" && !open.has(row.type)) open.set(row.type, { from: time, label: `${row.type} (${row.severity})` });
    if (row.status === "cleared" && open.has(row.type)) {
      regions.push({ ...open.get(row.type), to: time });
      open.delete(row.type);
    }
  }
  for (const region of open.values()) regions.push({ ...region, to: null });
  return regions.filter((r) => (r.to ?? to) > from && r.from < to);
}

// ---- SQL editor --------------------------------------------------------------------------------

const SQL_PAGE = 100;

async function sqlPage(params) {
  const editor = el("textarea", { id: "sql", spellcheck: "false" }, params.get("q") || "SELECT gateway, count(*) AS readings FROM measurements GROUP BY gateway ORDER BY gateway");
  const output = el("div", { id: "result" });
  const run = () => {
    history.replaceState(null, "", "#/sql?" + new URLSearchParams({ q: editor.value }));
    runSql(editor.value, output);
  };
  editor.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  const examples = el("div", { class: "examples", id: "examples" });
  show(el("h1", {}, "SQL"), el("div", { class: "muted" }, "Examples from queries/:"), examples, editor,
    el("div", { class: "toolbar" }, el("button", { id: "run", onclick: run }, "Run"), el("span", { class: "muted" }, "Ctrl+Enter · read-only: SELECT, EXPLAIN, SHOW")),
    output);
  fetch("/console/examples.json").then((r) => r.json()).then((list) => {
    examples.replaceChildren(...list.map((example) => el("button", {
      title: example.name, onclick: () => { editor.value = example.sql; run(); },
    }, example.name.replace(/\.sql$/, ""))));
  });
  if (params.get("q")) run();
}

async function runSql(sql, output) {
  const status = el("p", { class: "muted", id: "status" }, "Running…");
  output.replaceChildren(status);
  const began = performance.now();
  const rows = [];
  let page = 0;
  const holder = el("div");
  const chart = el("div");
  output.append(chart, holder);
  const render = () => {
    const columns = rows.length ? Object.keys(rows[0]) : [];
    const pages = Math.max(1, Math.ceil(rows.length / SQL_PAGE));
    page = Math.min(page, pages - 1);
    holder.replaceChildren(
      table(columns, rows.slice(page * SQL_PAGE, (page + 1) * SQL_PAGE)),
      el("div", { class: "toolbar" },
        el("button", { class: "plain", disabled: page === 0, onclick: () => { page--; render(); } }, "‹ previous"),
        el("span", { class: "muted" }, `page ${page + 1} of ${pages}`),
        el("button", { class: "plain", disabled: page + 1 >= pages, onclick: () => { page++; render(); } }, "next ›")));
  };
  try {
    let shown = false;
    await queryStream(sql, (batch) => {
      for (const row of batch) rows.push(row);
      status.textContent = `${rows.length} rows so far…`;
      if (!shown) { render(); shown = true; }
    });
    render();
    status.textContent = `${rows.length} rows in ${Math.round(performance.now() - began)} ms`;
    resultChart(rows, chart);
  } catch (error) {
    output.replaceChildren(failure(error));
  }
}

// A line chart when the result has a `time` column and numeric columns: a line per numeric
// column, or per value of the one text column beside them (an entity, a series).
function resultChart(rows, holder) {
  if (!rows.length || !("time" in rows[0])) return;
  const columns = Object.keys(rows[0]).filter((c) => c !== "time");
  const numeric = columns.filter((c) => rows.some((r) => typeof r[c] === "number"));
  const text = columns.filter((c) => !numeric.includes(c));
  if (!numeric.length) return;
  const key = text.length === 1 ? text[0] : null;
  const lines = new Map();
  for (const row of rows) {
    const t = Date.parse(row.time);
    if (Number.isNaN(t)) continue;
    for (const c of numeric) {
      if (typeof row[c] !== "number") continue;
      const name = key ? `${row[key]} ${c}` : c;
      if (!lines.has(name)) lines.set(name, []);
      lines.get(name).push([t, row[c]]);
    }
  }
  if (lines.size > 12) return;
  const canvas = el("canvas", { class: "chart", id: "result-chart" });
  holder.replaceChildren(canvas);
  const list = [...lines].map(([name, points]) => ({ name, points: points.sort((a, b) => a[0] - b[0]) }));
  TwinlakeChart.draw(canvas, { lines: list });
}

// ---- ingest health -----------------------------------------------------------------------------

let ingestTimer = null;

// Prometheus text to {name: [{labels, value}]}.
function parseMetrics(text) {
  const metrics = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    (metrics[match[1]] ||= []).push({ labels, value: Number(match[4]) });
  }
  return metrics;
}

function total(metrics, name, filter = () => true) {
  return (metrics[name] || []).filter((m) => filter(m.labels)).reduce((sum, m) => sum + m.value, 0);
}

async function ingestPage() {
  const stats = el("div", { class: "stats", id: "ingest-stats" });
  const reasons = el("section", { class: "card", id: "rejected-reasons" });
  const tables = el("section", { class: "card", id: "tables" });
  const latestRejected = el("section", { class: "card", id: "rejected-latest" });
  show(el("h1", {}, "Ingest health"), stats, tables, reasons, latestRejected);
  let previous = null;
  const refresh = async () => {
    let metrics;
    try {
      const response = await fetch("/metrics");
      if (!response.ok) throw new Error(errorText(await response.text(), response.status));
      metrics = parseMetrics(await response.text());
    } catch (error) {
      stats.replaceChildren(failure(error));
      return;
    }
    const now = performance.now();
    const messages = total(metrics, "twinlake_mqtt_messages_received_total");
    const values = total(metrics, "twinlake_rows_total", (l) => l.table === "measurements");
    const rate = (current, key) => previous ? Math.max(0, (current - previous[key]) / ((now - previous.at) / 1000)) : null;
    const stat = (label, value, id) => el("div", { class: "stat", id }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
    const perSecond = (value) => value === null ? "…" : formatNumber(Math.round(value));
    stats.replaceChildren(
      stat("messages / s", perSecond(rate(messages, "messages")), "messages-rate"),
      stat("values / s", perSecond(rate(values, "values")), "values-rate"),
      stat("messages received", formatNumber(messages), "messages-total"),
      stat("rejected", formatNumber(total(metrics, "twinlake_rejected_total")), "rejected-total"),
      stat("WAL bytes", bytes(total(metrics, "twinlake_wal_bytes"))),
      stat("awaiting fsync (acks pending)", formatNumber(total(metrics, "twinlake_acks_pending"))),
      stat("rows in memory (bytes)", bytes(total(metrics, "twinlake_hot_bytes"))),
      stat("persist failures", formatNumber(total(metrics, "twinlake_persist_failures_total"))),
      stat("MQTT connections", formatNumber(total(metrics, "twinlake_mqtt_connections"))),
      stat("backpressure / WAL disk full", `${total(metrics, "twinlake_ingest_backpressure") ? "yes" : "no"} / ${total(metrics, "twinlake_wal_disk_full") ? "yes" : "no"}`),
    );
    previous = { at: now, messages, values };
    const byTable = new Map();
    for (const [name, key] of [["twinlake_rows_total", "rows"], ["twinlake_persisted_rows_total", "persisted"], ["twinlake_lake_files", "files"]]) {
      for (const m of metrics[name] || []) {
        if (!m.labels.table) continue;
        byTable.set(m.labels.table, { ...(byTable.get(m.labels.table) || { table: m.labels.table }), [key]: m.value });
      }
    }
    tables.replaceChildren(el("h2", {}, "Tables: rows taken in, persisted to the lake, files"),
      table(["table", "rows", "persisted", "files"], [...byTable.values()]));
    const rejected = (metrics.twinlake_rejected_total || []).map((m) => ({ reason: m.labels.reason, messages: m.value }));
    reasons.replaceChildren(el("h2", {}, "Rejected, by reason"),
      rejected.length ? table(["reason", "messages"], rejected) : el("p", { class: "muted" }, "Nothing rejected."));
  };
  await refresh();
  try {
    const rows = await query(`SELECT received_at, gateway, topic, reason_code, reason, encode(payload, 'base64') AS payload
FROM rejected ORDER BY received_at DESC LIMIT 20`);
    latestRejected.replaceChildren(el("h2", {}, "Latest rejected messages"), rows.length ? table(
      ["received_at", "gateway", "topic", "reason_code", "reason", "payload"], rows, {
        cells: (row, c) => c === "payload" ? el("td", {}, el("pre", { class: "payload" }, payloadText(row.payload))) : cell(row[c]),
      }) : el("p", { class: "muted" }, "None."));
  } catch (error) {
    latestRejected.replaceChildren(el("h2", {}, "Latest rejected messages"), failure(error));
  }
  ingestTimer = setInterval(refresh, 2000);
}

function payloadText(base64) {
  if (!base64) return "";
  const raw = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const text = new TextDecoder("utf-8", { fatal: false }).decode(raw);
  return text.length > 300 ? text.slice(0, 300) + "…" : text;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// ---- routing -----------------------------------------------------------------------------------

async function route() {
  clearInterval(ingestTimer);
  const [path, search] = (location.hash.slice(1) || "/fleet").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("active", link.dataset.page === (parts[0] === "gateway" ? "fleet" : parts[0]));
  }
  document.body.dataset.page = parts[0] || "fleet";
  document.body.dataset.ready = "";
  if (parts[0] === "gateway" && parts[1]) await gatewayPage(decodeURIComponent(parts[1]), params);
  else if (parts[0] === "sql") await sqlPage(params);
  else if (parts[0] === "ingest") await ingestPage();
  else await fleetPage(params);
  // Tests and scripts wait for this: the page's first data is shown.
  document.body.dataset.ready = "yes";
}

window.addEventListener("hashchange", route);
route();
