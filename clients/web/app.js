// The web UI of nppd: builds a job from the form, submits it, follows its
// progress, and shows the top-k predictions of every input and of the
// patched run, the metric and the path graph. Server errors are shown next
// to the form field they name. No build step: plain browser JavaScript.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const t = $("token").value.trim();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (e) { /* svg or text */ }
  if (r.status >= 400) {
    const err = (data && data.error) || { code: "http_" + r.status, message: text, field: "" };
    err.status = r.status;
    throw err;
  }
  return data;
}

function clearErrors() {
  document.querySelectorAll(".err").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
}

// Shows an error next to the field it names ("inputs[1]", "which[0].match",
// "preset.node", "metric.target"...), or under the Run button.
function showError(err) {
  const field = err.field || "";
  const text = `${err.message} (${err.status || ""} ${err.code || ""})`;
  let box = null;
  const inputs = Array.from(document.querySelectorAll("[data-field]"));
  const exact = inputs.find((el) => el.dataset.field === field.replace(/\[\d+\]$/, ""));
  const prefix = inputs.find((el) => field.startsWith(el.dataset.field));
  const el = exact || prefix;
  if (el) {
    el.classList.add("invalid");
    const root = field.split(/[.[]/)[0];
    box = el.closest(".kind, section")?.querySelector(`.err[data-for="${root}"]`);
  }
  (box || $("error-general")).textContent = text;
}

function kind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

function list(s) {
  return s.split(",").map((x) => x.trim()).filter(Boolean);
}

// The job document (docs/jobs.md) for the form's contents.
function buildJob() {
  const inputs = $("inputs").value.split("\n").filter((l) => l.trim() !== "");
  const job = {
    model: $("model").value,
    inputs,
    outputs: { top_k: 5, baselines: true },
    metric: { type: "logit_diff", target: $("m-target").value, baseline: $("m-baseline").value },
  };
  if (kind() === "activation_patch") {
    job.preset = { type: "activation_patch", node: $("ap-node").value.trim(), from: Number($("ap-from").value) };
    const pos = list($("ap-positions").value);
    if (pos.length) job.preset.positions = pos.map(Number);
  } else if (kind() === "path_patch") {
    job.preset = { type: "path_patch", senders: list($("pp-senders").value), receivers: list($("pp-receivers").value) };
  } else {
    for (const k of ["branch", "which"]) {
      try {
        job[k] = JSON.parse($(k).value || "[]");
      } catch (e) {
        throw { field: k, code: "invalid_json", message: `${k}: not valid JSON (${e.message})` };
      }
    }
  }
  return job;
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(4) : String(x);
}

function topRow(label, positions) {
  const tr = document.createElement("tr");
  const th = document.createElement("td");
  th.textContent = label;
  const td = document.createElement("td");
  const last = positions[positions.length - 1];
  td.textContent = last.tokens.map((t) => `${JSON.stringify(t.token)} ${fmt(t.logprob)}`).join("   ");
  tr.append(th, td);
  return tr;
}

async function showResult(job) {
  const res = job.result;
  $("results").classList.remove("hidden");
  $("metric").textContent = fmt(res.metric.mean);
  $("metric-baselines").textContent = "unpatched: " +
    res.baselines.map((b) => `input ${b.input} ${fmt(b.metric.mean)}`).join(", ");
  const tb = $("topk").querySelector("tbody");
  tb.textContent = "";
  for (const b of res.baselines) tb.append(topRow(`input ${b.input}`, b.top_k[0]));
  tb.append(topRow("patched", res.outputs.top_k[0]));
  const s = res.stats;
  $("stats").textContent = `${s.values_planned} values planned, ${s.values_computed} computed, ` +
    `${s.values_cached} from the cache, ${s.path_nodes} path nodes; plan ${s.plan_ms.toFixed(1)} ms, ` +
    `run ${s.exec_ms.toFixed(1)} ms`;
  try {
    $("graph").innerHTML = await api("GET", `/v1/jobs/${job.id}/graph.svg`);
  } catch (e) {
    $("graph").textContent = `no graph: ${e.message}`;
  }
}

async function run(ev) {
  ev.preventDefault();
  clearErrors();
  $("run").disabled = true;
  const bar = $("progress");
  try {
    const doc = buildJob();
    localStorage.setItem("npp-token", $("token").value);
    let job = await api("POST", "/v1/jobs", doc);
    bar.classList.remove("hidden");
    while (!["done", "failed", "cancelled"].includes(job.state)) {
      bar.max = Math.max(1, job.progress.total);
      bar.value = job.progress.done;
      $("progress-text").textContent = `${job.state}: ${job.progress.done}/${job.progress.total} values`;
      await new Promise((r) => setTimeout(r, 150));
      job = await api("GET", `/v1/jobs/${job.id}`);
    }
    bar.value = bar.max;
    $("progress-text").textContent = job.state;
    if (job.state !== "done") throw Object.assign({}, job.error, { status: 200 });
    await showResult(job);
  } catch (err) {
    showError(err);
  } finally {
    $("run").disabled = false;
  }
}

async function loadModels() {
  try {
    const { models } = await api("GET", "/v1/models");
    $("model").textContent = "";
    for (const m of models) {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = m.config ? `${m.name} (${m.config.n_layer} layers, ${m.config.n_head} heads)` : `${m.name} (loading)`;
      $("model").append(o);
    }
    $("server-status").textContent = "";
  } catch (e) {
    $("server-status").textContent = e.status === 401 || e.status === 403 ? "enter a valid token" : e.message;
  }
}

document.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", () => {
  document.querySelectorAll(".kind").forEach((d) => d.classList.add("hidden"));
  $("kind-" + kind()).classList.remove("hidden");
}));
$("job").addEventListener("submit", run);
$("token").value = localStorage.getItem("npp-token") || "";
$("token").addEventListener("change", loadModels);
loadModels();
