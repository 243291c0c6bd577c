// The index of a group's outboxes: one row each from `api/outboxes`,
// refreshed every three seconds. Names are the operator's: they reach the
// page as text only.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function badge(o) {
  if (o.status === "ok") return el("span", "ok", "badge");
  const text = o.status === "unreachable" ? `unreachable: ${o.error}` : o.attention.join(", ");
  const b = el("span", o.status === "unreachable" ? "unreachable" : "needs attention", "badge bad");
  b.title = text;
  const cell = el("span");
  cell.append(b, el("span", ` ${text}`, "muted"));
  return cell;
}

function cell(content, cls) {
  const td = el("td", content instanceof Node ? undefined : content, cls);
  if (content instanceof Node) td.appendChild(content);
  return td;
}

async function refresh() {
  const res = await fetch("api/outboxes", { headers: { "Accept": "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
  const list = body.outboxes;
  const rows = list.map((o) => {
    const tr = document.createElement("tr");
    tr.dataset.status = o.status;
    const a = el("a", o.name);
    // A path the server built: "o/" and the percent-encoded name.
    a.href = o.path;
    const read = o.status !== "unreachable";
    tr.append(
      cell(a),
      cell(read ? o.pending : "–", "num"),
      cell(read ? age(o.oldest_pending_seconds) : "–", "num"),
      cell(read ? o.dead_letters : "–", "num"),
      cell(read ? o.blocked_keys : "–", "num"),
      cell(read ? o.relays_alive : "–", "num"),
      cell(badge(o)),
    );
    return tr;
  });
  if (!rows.length) {
    const td = el("td", "No outbox in this group.", "empty");
    td.colSpan = 7;
    const tr = document.createElement("tr");
    tr.appendChild(td);
    rows.push(tr);
  }
  $("#outboxes tbody").replaceChildren(...rows);
  const read = list.filter((o) => o.status !== "unreachable");
  const sum = (k) => read.reduce((n, o) => n + o[k], 0);
  $("#count").textContent = list.length;
  $("#pending").textContent = sum("pending");
  const oldest = read.map((o) => o.oldest_pending_seconds).filter((s) => s !== null);
  $("#oldest").textContent = oldest.length ? age(Math.max(...oldest)) : "–";
  $("#dead_letters").textContent = sum("dead_letters");
  $("#blocked_keys").textContent = sum("blocked_keys");
  $("#dead_letters").parentElement.classList.toggle("alert", sum("dead_letters") > 0);
  $("#blocked_keys").parentElement.classList.toggle("alert", sum("blocked_keys") > 0);
  const trouble = list.filter((o) => o.status !== "ok").length;
  const health = $("#health");
  health.textContent = trouble ? `${trouble} of ${list.length} need attention` : "all healthy";
  health.className = trouble ? "badge bad" : "badge";
}

async function tick() {
  try {
    await refresh();
    $("#flash").hidden = true;
  } catch (e) {
    const f = $("#flash");
    f.textContent = `cannot read the outboxes: ${e.message}`;
    f.className = "bad";
    f.hidden = false;
  }
}

tick();
setInterval(tick, 3000);
