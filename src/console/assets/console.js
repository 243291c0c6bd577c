// The outbox console: one page, its views chosen by the URL's fragment,
// filled from the console's JSON API. No framework, nothing fetched from
// elsewhere.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const readOnly = document.querySelector('meta[name="read-only"]').content === "true";
const $ = (sel) => document.querySelector(sel);
let refresh = null;

async function api(path, options = {}) {
  const init = { headers: { "Accept": "application/json" }, ...options };
  if (init.method && init.method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = csrf;
    init.body = JSON.stringify(options.body || {});
  }
  const res = await fetch(path, init);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? wrap(c) : el("td", c));
  return tr;
}

function wrap(node) {
  const td = document.createElement("td");
  td.appendChild(node);
  return td;
}

// Fills a table's body; `empty` says what an empty table means.
function fill(tbody, rows, empty) {
  if (!rows.length && empty) {
    const td = el("td", empty, "empty");
    td.colSpan = tbody.parentElement.querySelectorAll("thead th").length || 2;
    const tr = document.createElement("tr");
    tr.appendChild(td);
    rows = [tr];
  }
  tbody.replaceChildren(...rows);
}

let flashTimer = null;

// Says what a change did (or why a request failed), for ten seconds.
function flash(text, bad) {
  const f = $("#flash");
  f.textContent = text;
  f.className = bad ? "bad" : "";
  f.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { f.hidden = true; }, 10000);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function bytes(n) {
  if (n === null || n === undefined) return null;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// A line chart of `values` (nulls skipped) over the SVG's 300 x 90 box.
function chart(svg, values) {
  const points = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  const max = Math.max(1, ...points.map(([, v]) => v));
  const n = Math.max(1, values.length - 1);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map(([i, v]) =>
    `${(i / n * 296 + 2).toFixed(1)},${(86 - v / max * 74).toFixed(1)}`).join(" "));
  const top = document.createElementNS("http://www.w3.org/2000/svg", "text");
  top.setAttribute("x", "2");
  top.setAttribute("y", "12");
  const last = points.length ? points[points.length - 1][1] : null;
  top.textContent = `now ${last === null ? "–" : round(last)} · max ${round(max)}`;
  svg.replaceChildren(line, top);
}

function round(v) {
  return v >= 100 ? Math.round(v) : Math.round(v * 10) / 10;
}

async function overview() {
  const o = await api("api/overview");
  const s = o.stats;
  for (const k of ["pending", "ready", "retry_waiting", "parked", "dead_letters", "blocked_keys"]) {
    $("#" + k).textContent = s[k];
  }
  $("#dead_letters").parentElement.classList.toggle("alert", s.dead_letters > 0);
  $("#blocked_keys").parentElement.classList.toggle("alert", s.blocked_keys > 0);
  $("#oldest").textContent = age(s.oldest_pending_seconds);
  const failing = o.relays.filter((r) => r.alive && r.publish_error);
  const alive = o.relays.filter((r) => r.alive).length;
  const health = $("#health");
  const trouble = failing.length > 0 || s.dead_letters > 0 || s.blocked_keys > 0 || (s.pending > 0 && alive === 0);
  health.textContent = failing.length ? `${failing.length} relay(s) cannot publish`
    : alive === 0 && s.pending > 0 ? "no live relay" : trouble ? "needs attention" : "healthy";
  health.className = trouble ? "badge bad" : "badge";
  const h = o.history;
  chart($("#chart-published"), h.map((x) => x.published_per_second));
  chart($("#chart-pending"), h.map((x) => x.pending));
  chart($("#chart-oldest"), h.map((x) => x.oldest_pending_seconds));
  chart($("#chart-dead"), h.map((x) => x.dead_letters));
  chart($("#chart-lag"), h.map((x) => x.consumer_lag));
  const err = $("#sample-error");
  err.hidden = !o.sample_error;
  err.textContent = o.sample_error ? `sampling failed: ${o.sample_error}` : "";
  const now = new Date(o.now);
  const span = h.length > 1 ? (new Date(h[h.length - 1].at) - new Date(h[0].at)) / 1000 : 0;
  for (const c of document.querySelectorAll(".charts figcaption")) c.dataset.span = span ? `last ${age(span)}` : "";
  fill($("#relays tbody"), o.relays.map((r) => {
    const expires = (new Date(r.heartbeat_expires_at) - now) / 1000;
    return row([
      el("code", r.relay), r.alive ? "yes" : "no", r.leases,
      expires >= 0 ? `expires in ${age(expires)}` : `expired ${age(-expires)} ago`,
      r.publish_error ? el("span", `failing: ${r.publish_error}`, "error") : "ok",
    ]);
  }), "no relay has recorded a heartbeat");
  fill($("#topics tbody"), o.topics.map((t) => row([t.topic, t.pending, age(t.oldest_seconds)])), "nothing pending");
  const storage = [];
  if (s.table_bytes !== null) storage.push(`messages table ${bytes(s.table_bytes)}`);
  if (s.dead_tuples !== null) storage.push(`${s.dead_tuples} dead tuples`);
  if (s.oldest_transaction_seconds !== null) storage.push(`oldest open transaction ${age(s.oldest_transaction_seconds)}`);
  $("#storage").textContent = storage.join(" · ");
}

// The search last listed, without the listing's limit: what a bulk change
// applies to.
function bulkFilter() {
  const { limit, ...filter } = lastSearch;
  return filter;
}

function describe(filter) {
  const parts = Object.entries(filter).map(([k, v]) => `${k} ${JSON.stringify(v)}`);
  return parts.length ? parts.join(", ") : "no filter (every dead letter)";
}

function searchParams() {
  const form = new FormData($("#search"));
  const params = {};
  for (const [k, v] of form.entries()) if (String(v).trim() !== "") params[k] = String(v).trim();
  return params;
}

let lastSearch = {};

async function deadLetters() {
  const params = searchParams();
  lastSearch = params;
  const list = (await api("api/dead?" + new URLSearchParams(params))).dead_letters;
  fill($("#dead-table tbody"), list.map((d) => {
    const tr = row([when(d.dead_at), d.topic, d.key || "–", d.attempts, d.last_error, el("code", d.id)]);
    tr.className = "link";
    tr.dataset.id = d.id;
    tr.addEventListener("click", () => { location.hash = "#/dead/" + d.id; });
    return tr;
  }));
  $("#dead-empty").hidden = list.length > 0;
}

async function letter(id) {
  const d = await api("api/dead/" + encodeURIComponent(id));
  $("#letter-title").textContent = `Dead letter ${d.id}`;
  const fields = [
    ["Topic", d.topic], ["Key", d.key || "–"], ["Event type", d.event_type],
    ["Schema version", d.schema_version], ["Position", d.position], ["Attempts", d.attempts],
    ["Last error", d.last_error], ["Created", when(d.created_at)], ["Dead since", when(d.dead_at)],
    ["Content type", d.content_type],
  ];
  $("#letter-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  fill($("#letter-headers tbody"), Object.entries(d.headers).map(([k, v]) => row([el("code", k), v])), "none");
  let payload = d.payload_hidden ? "(hidden by the console's settings)" : d.payload;
  if (!d.payload_hidden) {
    try { payload = JSON.stringify(JSON.parse(d.payload), null, 2); } catch (_) { /* not JSON */ }
  }
  $("#letter-payload").textContent = payload;
  $("#replay").onclick = () => change(`api/dead/${d.id}/replay`, {}, (r) =>
    r.replayed ? `Replayed ${d.id}: it is pending again.` : `${d.id} stayed: a message with its id is pending.`, "#/dead");
  $("#discard").onclick = () => {
    if (confirm(`Discard dead letter ${d.id} for good?`)) {
      change(`api/dead/${d.id}/discard`, {}, () => `Discarded ${d.id}.`, "#/dead");
    }
  };
}

async function blocked() {
  const keys = (await api("api/blocked")).blocked_keys;
  fill($("#blocked-table tbody"), keys.map((b) => {
    const button = el("button", "Unblock", "danger unblock");
    button.addEventListener("click", () => {
      if (confirm(`Unblock ${b.key}? Its later messages publish before the one at position ${b.position}.`)) {
        change("api/blocked/unblock", { key: b.key }, () => `Unblocked ${b.key}.`, "#/blocked");
      }
    });
    return row([el("code", b.key), b.position, when(b.since), b.message, button]);
  }));
  $("#blocked-empty").hidden = keys.length > 0;
}

async function consumers() {
  const list = (await api("api/consumers")).consumers;
  fill($("#consumers-table tbody"), list.map((c) => row([
    c.consumer, (c.behind_at_least ? `${c.behind}+` : c.behind), `${age(c.idle_seconds)} ago`, el("code", c.cursor),
  ])));
  $("#consumers-empty").hidden = list.length > 0;
}

async function change(path, body, said, then) {
  try {
    const r = await api(path, { method: "POST", body });
    flash(said(r));
    if (location.hash === then) route(); else location.hash = then;
  } catch (e) {
    flash(e.message, true);
  }
}

function show(view) {
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + view;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (view === "letter" ? "dead" : view));
  }
}

let generation = 0;

async function route() {
  const mine = ++generation;
  clearTimeout(refresh);
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, id] = hash.split("/");
  const views = new Map([
    ["", ["overview", overview, true]],
    ["dead", id ? ["letter", () => letter(id), false] : ["dead", deadLetters, false]],
    ["blocked", ["blocked", blocked, false]],
    ["consumers", ["consumers", consumers, true]],
  ]);
  const [view, load, live] = views.get(page) || views.get("");
  show(view);
  // One request at a time, the next two seconds after the last answered,
  // and only while this view is still the one shown.
  const run = async () => {
    await load().catch((e) => flash(e.message, true));
    if (live && mine === generation) refresh = setTimeout(run, 2000);
  };
  await run();
}

document.addEventListener("DOMContentLoaded", () => {
  if (readOnly) {
    document.body.classList.add("read-only");
    $("#mode").hidden = false;
  }
  $("#search").addEventListener("submit", (e) => { e.preventDefault(); deadLetters().catch((x) => flash(x.message, true)); });
  $("#replay-matching").addEventListener("click", () => {
    if (confirm(`Replay every dead letter that matches ${describe(bulkFilter())}, not only those listed?`)) {
      change("api/dead/replay", bulkFilter(), (r) =>
        `Replayed ${r.replayed}; ${r.not_replayed} stayed (their id is pending).`, "#/dead");
    }
  });
  $("#discard-matching").addEventListener("click", () => {
    if (confirm(`Discard every dead letter that matches ${describe(bulkFilter())} for good, not only those listed?`)) {
      change("api/dead/discard", bulkFilter(), (r) =>
        `Discarded ${r.discarded}; ${r.kept} kept (an older dead letter of their id goes first).`, "#/dead");
    }
  });
  window.addEventListener("hashchange", route);
  route();
});
