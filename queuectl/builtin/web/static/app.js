// The dashboard's script. Job text is only ever set through textContent, never as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="queuectl-token"]').content;
const STATES = ["pending", "processing", "completed", "failed", "dead", "cancelled"];

function flash(text, bad) {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = bad ? "bad" : "ok";
}

async function act(action, body) {
  const response = await fetch("/api/" + action, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Queuectl-Token": TOKEN},
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function button(action, data) {
  const b = document.createElement("button");
  b.textContent = action;
  b.dataset.action = action;
  Object.assign(b.dataset, data);
  return b;
}

// After an action on a page other than the overview, the page is loaded again shortly, so that the flash
// can be read first. Leaving the page cancels that: a reload fired while a navigation the user started is
// still loading would take them back to this page instead (beforeunload comes as a navigation begins).
let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => location.reload(), 600);
}
window.addEventListener("beforeunload", () => clearTimeout(reloadTimer));

document.addEventListener("click", async (event) => {
  const b = event.target.closest("button[data-action]");
  if (!b) return;
  const body = b.dataset.job ? {job_id: b.dataset.job} : {queue: b.dataset.queue};
  try {
    const result = await act(b.dataset.action, body);
    flash(b.dataset.action + " done: " + (b.dataset.job || b.dataset.queue) +
          (result.job ? " is " + result.job.state : result.state ? " is " + result.state : ""));
    if (document.body.dataset.page !== "overview") reloadSoon();
    else refreshOverview();
  } catch (err) {
    flash(b.dataset.action + " refused: " + err.message, true);
  }
});

// --- overview ------------------------------------------------------------------------------

function chart(id, points, series) {
  const canvas = document.getElementById(id);
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  let top = 0;
  for (const p of points) for (const s of series) top = Math.max(top, p[s.key] || 0);
  top = top || 1;
  ctx.strokeStyle = "#ccd"; ctx.fillStyle = "#556"; ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 4, h - pad); ctx.stroke();
  ctx.fillText(top < 10 ? top.toPrecision(2) : String(Math.round(top)), 2, 12);
  ctx.fillText("0", 2, h - pad);
  if (points.length) {
    // an hour reads as times of day; a day needs the date too
    const long = points[points.length - 1].t - points[0].t > 7200;
    const label = (t) => new Date(t * 1000).toISOString().slice(long ? 5 : 11, 16).replace("T", " ") + "Z";
    ctx.fillText(label(points[0].t), pad, h - 10);
    const last = label(points[points.length - 1].t);
    ctx.fillText(last, w - 6 - ctx.measureText(last).width, h - 10);
  }
  const x = (i) => pad + (w - pad - 6) * (points.length > 1 ? i / (points.length - 1) : 0);
  const y = (v) => h - pad - (h - pad - 6) * (v / top);
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
    let started = false;
    points.forEach((p, i) => {
      const v = p[s.key];
      if (v === null || v === undefined) { started = false; return; }
      if (started) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
      started = true;
    });
    ctx.stroke();
    ctx.fillStyle = s.color;        // a dot per value, so a lone minute shows too
    points.forEach((p, i) => {
      const v = p[s.key];
      if (v) ctx.fillRect(x(i) - 1.5, y(v) - 1.5, 3, 3);
    });
  }
}

const RUNS = [{key: "runs", color: "#2a7"}, {key: "failed", color: "#d33"}];
const DURATIONS = [{key: "p50", color: "#27c"}, {key: "p95", color: "#e90"}, {key: "p99", color: "#c3c"}];

function ago(seconds) {
  if (seconds === undefined) return "";
  if (seconds < 90) return seconds.toFixed(0) + " s";
  if (seconds < 5400) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function renderOverview(data) {
  for (const state of STATES) {
    const el = document.getElementById("count-" + state);
    if (el) el.textContent = String(data.counts[state] || 0);
  }
  const queues = document.querySelector("#queues tbody");
  queues.replaceChildren(...data.queues.map((q) => {
    const row = document.createElement("tr");
    cell(row, q.name);
    for (const state of STATES) cell(row, q.counts[state]);
    cell(row, ago(data.oldest_pending[q.name]));
    cell(row, q.concurrency);
    const action = q.paused ? "resume" : "pause";
    cell(row, "").appendChild(button(action, {queue: q.name}));
    return row;
  }));
  const workers = document.querySelector("#workers tbody");
  workers.replaceChildren(...data.workers.map((w) => {
    const row = document.createElement("tr");
    for (const key of ["id", "kind", "host", "pid", "started_at"]) cell(row, w[key]);
    const td = cell(row, "");
    if (w.job_id) {
      const a = document.createElement("a");
      a.href = "/jobs/" + encodeURIComponent(w.job_id);
      a.textContent = w.job_id;
      td.appendChild(a);
    }
    return row;
  }));
  chart("chart-hour-runs", data.hour, RUNS);
  chart("chart-hour-duration", data.hour, DURATIONS);
  chart("chart-day-runs", data.day, RUNS);
  chart("chart-day-duration", data.day, DURATIONS);
  document.getElementById("updated").textContent = "Last update " + new Date().toISOString().slice(11, 19) + "Z.";
  if (!document.body.dataset.loaded) document.body.dataset.drawnAt = String(performance.now());   // for the benchmark
  document.body.dataset.loaded = "1";
}

async function refreshOverview() {
  try {
    const response = await fetch("/api/overview", {credentials: "same-origin"});
    const data = await response.json().catch(() => ({}));
    if (response.ok) {
      renderOverview(data);
      const el = document.getElementById("flash");
      if (el.textContent.startsWith("not updated")) flash("", false);
    } else flash("not updated: " + (data.error || response.statusText), true);
  } catch (err) { flash("not updated: the dashboard does not answer", true); }   // the next tick tries again
}

// --- one job: its fields, its attempts (newest first, no output) and one attempt's output -------
// The output shown is at most HEAD + TAIL characters a stream (its start and its end, with a marker
// between); a running attempt is extended with what was stored after the last look (its cursor).

const view = {rows: new Map(), listed: 0, shown: null, running: false, cursor: 0, streams: {}, generation: 0};

async function getJSON(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function jobPath() {
  return "/api/jobs/" + encodeURIComponent(document.getElementById("job-id").textContent);
}

function renderFields(job) {
  for (const el of document.querySelectorAll("[data-field]")) {
    const value = job[el.dataset.field];
    el.textContent = typeof value === "string" ? value : JSON.stringify(value);
  }
}

function attemptRow(a) {
  const row = document.createElement("tr");
  row.dataset.attempt = String(a.attempt);
  cell(row, a.attempt);
  cell(row, a.outcome);
  cell(row, (a.exit_code === null ? "-" : a.exit_code) + (a.signal ? " (signal " + a.signal + ")" : ""));
  cell(row, Number(a.duration).toFixed(3) + " s");
  for (const key of ["created_at", "finished_at"]) cell(row, a[key]);
  cell(row, (a.worker || "") + (a.host ? " on " + a.host : ""));
  cell(row, a.error);
  const td = cell(row, a.running ? "running " : a.stdout_bytes + " + " + a.stderr_bytes + " bytes ");
  const link = document.createElement("a");
  link.className = "show";
  link.href = "?attempt=" + a.attempt;
  link.dataset.show = String(a.attempt);
  link.textContent = "show";
  td.appendChild(link);
  return row;
}

function renderRows(attempts, limit) {
  for (const a of attempts) {
    view.rows.set(a.attempt, a);
    if (!a.running) view.listed = Math.max(view.listed, a.attempt);
  }
  const numbers = [...view.rows.keys()].sort((x, y) => y - x);
  for (const n of numbers.slice(limit)) view.rows.delete(n);      // the page lists the newest ones only
  document.querySelector("#attempts-list tbody").replaceChildren(
    ...numbers.slice(0, limit).map((n) => attemptRow(view.rows.get(n))));
  const none = document.getElementById("no-attempts");
  if (none && numbers.length) none.remove();
}

function bytes(text) { return new TextEncoder().encode(text).length; }

function safeCut(text, at) {     // not between the two halves of a surrogate pair
  const code = text.charCodeAt(at);
  return code >= 0xdc00 && code <= 0xdfff ? at - 1 : at;
}

function fitStream(s, head, tail) {
  if (!s.cut && s.head.length + s.tail.length <= head + tail) return;
  if (s.head.length > head) {
    const at = safeCut(s.head, head);
    s.tail = s.head.slice(at) + s.tail;
    s.head = s.head.slice(0, at);
  }
  if (s.tail.length > tail) s.tail = s.tail.slice(safeCut(s.tail, s.tail.length - tail));
  s.cut = true;
  s.dropped = s.end - bytes(s.head) - bytes(s.tail);
}

function marker(s, number) {
  return s.cut ? "[... " + s.dropped + " bytes not shown: `" + document.getElementById("attempts").dataset.logs +
    " --attempt " + number + "` prints it whole ...]" : "";
}

function drawOutput(number, outcome) {
  const box = document.getElementById("attempts");
  if (box.dataset.number === String(number) && box.querySelector("h3")) {
    // the same attempt grew: change only what changed, so a selection in the output survives a refresh
    box.querySelector("h3").textContent = "attempt " + number + ": " + outcome;
    for (const name of ["stdout", "stderr"]) {
      const s = view.streams[name], pre = box.querySelector('pre[data-stream="' + name + '"]');
      const [head, cut, tail] = ["head", "cut", "tail"].map((cls) => pre.querySelector("." + cls));
      if (head.textContent !== s.head) head.textContent = s.head;
      if (cut.textContent !== marker(s, number)) cut.textContent = marker(s, number);
      const old = tail.textContent;
      if (s.tail.startsWith(old)) { if (s.tail.length > old.length) tail.append(s.tail.slice(old.length)); }
      else tail.textContent = s.tail;
    }
    return;
  }
  const title = document.createElement("h3");
  title.textContent = "attempt " + number + ": " + outcome;
  const parts = [title];
  for (const name of ["stdout", "stderr"]) {
    const s = view.streams[name];
    const label = document.createElement("h4");
    label.textContent = name;
    const pre = document.createElement("pre");
    pre.className = "out";
    pre.dataset.stream = name;
    for (const [cls, text] of [["head", s.head], ["cut", marker(s, number)], ["tail", s.tail]]) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      pre.appendChild(span);
    }
    parts.push(label, pre);
  }
  box.replaceChildren(...parts);
  box.dataset.number = String(number);
}

async function loadOutput(number) {
  const generation = ++view.generation;
  const data = await getJSON(jobPath() + "/attempts/" + number);
  if (generation !== view.generation) return;          // another attempt was asked for meanwhile
  view.shown = number;
  view.running = data.running;
  view.cursor = data.cursor || 0;
  for (const name of ["stdout", "stderr"]) {
    const part = data[name];
    view.streams[name] = {head: part.head, tail: part.tail, cut: part.dropped > 0, dropped: part.dropped,
                          end: part.end === undefined ? part.bytes : part.end};
  }
  drawOutput(number, data.running ? "running" : data.attempt.outcome);
}

async function loadMore() {
  const generation = view.generation, number = view.shown;
  const query = "?after=" + view.cursor + "&stdout=" + view.streams.stdout.end + "&stderr=" + view.streams.stderr.end;
  const data = await getJSON(jobPath() + "/attempts/" + number + query);
  if (generation !== view.generation) return;
  if (!data.running) { await loadOutput(number); return; }      // it ended: its record replaces the chunks
  const box = document.getElementById("attempts");
  view.cursor = data.cursor;
  for (const name of ["stdout", "stderr"]) {
    const s = view.streams[name], part = data[name];
    s.tail += part.append;
    if (part.skipped) s.cut = true;
    s.end = part.end;
    fitStream(s, Number(box.dataset.head), Number(box.dataset.tail));
  }
  drawOutput(number, "running");
}

async function refreshJob() {
  const list = document.getElementById("attempts-list");
  const before = list.dataset.before;
  try {
    const data = await getJSON(jobPath() + (before ? "?before=" + before : "?after=" + view.listed));
    renderRows(data.attempts, Number(list.dataset.rows));
    const chosen = Number(document.getElementById("attempts").dataset.chosen) || null;
    const target = chosen || Math.max(0, ...view.rows.keys()) || null;
    const row = target && view.rows.get(target);
    if (target && (target !== view.shown || (view.running && row && !row.running))) await loadOutput(target);
    else if (target && view.running) await loadMore();
    renderFields(data.job);                  // last: a test that sees the new state sees the output too
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
    const live = ["pending", "processing", "failed"].includes(data.job.state);
    document.getElementById("live").textContent = live ? "Refreshing while the job runs." : "";
    if (live) setTimeout(refreshJob, 1000);
  } catch (err) { setTimeout(refreshJob, 2000); }
}

document.addEventListener("click", async (event) => {
  const link = event.target.closest("a[data-show]");
  if (!link) return;
  event.preventDefault();                  // without the script, the link renders that attempt's page
  document.getElementById("attempts").dataset.chosen = link.dataset.show;
  try {
    await loadOutput(Number(link.dataset.show));
  } catch (err) { flash("attempt " + link.dataset.show + " not shown: " + err.message, true); }
});

// --- the DLQ: retry of a filtered set -----------------------------------------------------------

function dlqForm() {
  const form = document.getElementById("dlq-retry");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    // as typed: the server checks it (Number("x") would be NaN, sent as null, read as "any exit code")
    const code = form.elements.exit_code.value.trim();
    if (code) body.exit_code = code;
    if (form.elements.since.value.trim()) body.since = form.elements.since.value.trim();
    try {
      const result = await act("dlq-retry", body);
      flash(result.retried.length + " dead job(s) moved to pending");
      reloadSoon();
    } catch (err) {
      flash("retry refused: " + err.message, true);
    }
  });
}

const page = document.body.dataset.page;
if (page === "overview") { refreshOverview(); setInterval(refreshOverview, 2000); }
if (page === "job") refreshJob();
if (page === "dlq") dlqForm();
