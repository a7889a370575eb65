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

document.addEventListener("click", async (event) => {
  const b = event.target.closest("button[data-action]");
  if (!b) return;
  const body = b.dataset.job ? {job_id: b.dataset.job} : {queue: b.dataset.queue};
  try {
    const result = await act(b.dataset.action, body);
    flash(b.dataset.action + " done: " + (b.dataset.job || b.dataset.queue) +
          (result.job ? " is " + result.job.state : result.state ? " is " + result.state : ""));
    if (document.body.dataset.page !== "overview") setTimeout(() => location.reload(), 600);
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

// --- one job: its fields and attempts, refreshed while it can still change -------------------

function renderJob(data) {
  for (const el of document.querySelectorAll("[data-field]")) {
    const value = data.job[el.dataset.field];
    el.textContent = typeof value === "string" ? value : JSON.stringify(value);
  }
  const box = document.getElementById("attempts");
  box.replaceChildren(...data.attempts.map((a) => {
    const section = document.createElement("section");
    section.className = "attempt";
    const title = document.createElement("h3");
    title.textContent = "attempt " + a.attempt + ": " + a.outcome;
    const info = document.createElement("p");
    info.textContent = "exit code " + (a.exit_code === null ? "-" : a.exit_code) +
      (a.signal ? ", signal " + a.signal : "") + ", " + Number(a.duration).toFixed(3) + " s, started " +
      a.created_at + (a.error ? ", " + a.error : "");
    section.append(title, info);
    for (const stream of ["stdout", "stderr"]) {
      const label = document.createElement("h4");
      label.textContent = stream;
      const pre = document.createElement("pre");
      pre.className = "out";
      pre.textContent = a[stream];
      section.append(label, pre);
    }
    return section;
  }));
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
}

async function refreshJob() {
  const id = document.getElementById("job-id").textContent;
  try {
    const response = await fetch("/api/jobs/" + encodeURIComponent(id), {credentials: "same-origin"});
    if (!response.ok) return;
    const data = await response.json();
    renderJob(data);
    const live = ["pending", "processing", "failed"].includes(data.job.state);
    document.getElementById("live").textContent = live ? "Refreshing while the job runs." : "";
    if (live) setTimeout(refreshJob, 1000);
  } catch (err) { setTimeout(refreshJob, 2000); }
}

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
      setTimeout(() => location.reload(), 600);
    } catch (err) {
      flash("retry refused: " + err.message, true);
    }
  });
}

const page = document.body.dataset.page;
if (page === "overview") { refreshOverview(); setInterval(refreshOverview, 2000); }
if (page === "job") refreshJob();
if (page === "dlq") dlqForm();
