// The web UI of nppd: builds a job from the form (activation or path
// patching, ablation, steering, a grid, circuit discovery, a circuit, or
// rules), submits it, follows its progress, and shows the top-k
// predictions of every input and of the patched run (or of each run of a
// sweep), the metric, a grid's heatmap, a circuit's picture, scores and
// faithfulness curve, and the path graph. Server errors are shown next to the form field they
// name. No build step: plain browser JavaScript.
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
  const f = field.replace(/^sweep\[\d+\]\./, ""); // a sweep's variant: the same form fields
  if (f.startsWith("grid.preset")) { // a cell's error: beside the grid's fields
    $("kind-grid").querySelector(".err").textContent = text;
    return;
  }
  if (f.startsWith("attribution") && kind() === "discover") { // e.g. over the byte budget
    $("kind-discover").querySelector(".err").textContent = text;
    return;
  }
  const exact = inputs.find((el) => el.dataset.field === f.replace(/\[\d+\]$/, ""));
  const prefix = inputs.find((el) => f.startsWith(el.dataset.field));
  const el = exact || prefix;
  if (el) {
    el.classList.add("invalid");
    const root = f.split(/[.[]/)[0];
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

function positions(id) {
  const pos = list($(id).value);
  return pos.length ? pos.map(Number) : undefined;
}

// "all" or "0,2" for a grid axis; undefined when empty (not an axis).
function axis(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : v === "all" ? "all" : list(v).map(Number);
}

function metric() {
  const type = $("m-type").value, m = { type };
  if (type === "logit_diff") Object.assign(m, { target: $("m-target").value, baseline: $("m-baseline").value });
  else if (type !== "kl") m.token = $("m-target").value;
  if ($("m-normalize").checked) m.normalize = true;
  return m;
}

// Shows the token fields the chosen metric reads.
function metricFields() {
  const type = $("m-type").value;
  $("m-target-label").classList.toggle("hidden", type === "kl");
  $("m-baseline-label").classList.toggle("hidden", type !== "logit_diff");
  $("m-target-name").textContent = type === "logit_diff" ? "target" : "token";
  $("m-target").dataset.field = type === "logit_diff" ? "metric.target" : "metric.token";
}

// The job document (docs/jobs.md) for the form's contents.
function buildJob() {
  const inputs = $("inputs").value.split("\n").filter((l) => l.trim() !== "");
  const job = {
    model: $("model").value,
    inputs,
    outputs: { top_k: 5, baselines: true },
    metric: metric(),
  };
  const drop = (o) => { for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k]; return o; };
  if (kind() === "ablate") {
    job.preset = drop({ type: "ablate", node: $("ab-node").value.trim(), value: $("ab-value").value, positions: positions("ab-positions") });
  } else if (kind() === "steer") {
    const vector = list($("st-vector").value).map(Number);
    job.preset = drop({ type: "steer", node: $("st-node").value.trim(), vector, scale: Number($("st-scale").value), positions: positions("st-positions") });
  } else if (kind() === "grid") {
    const type = $("gr-type").value, node = $("gr-node").value.trim();
    const preset = type === "path_patch" ? { type, senders: [node], receivers: list($("gr-receivers").value) }
      : type === "ablate" ? { type } : { type, from: 1 };
    if ($("gr-pos").value.trim() !== "" && type !== "path_patch") preset.positions = ["{pos}"];
    job.grid = drop({ node, layer: axis("gr-layer"), head: axis("gr-head"), pos: axis("gr-pos"), preset });
  } else if (kind() === "discover") {
    const topN = list($("dc-top-n").value).map(Number);
    job.discover = drop({ method: $("dc-method").value, steps: $("dc-method").value === "eap" ? undefined : Number($("dc-steps").value),
      top_n: topN.length ? topN : undefined, verify: Number($("dc-verify").value) });
  } else if (kind() === "circuit") {
    job.circuit = { edges: parseEdges($("ci-edges").value) };
  } else if (kind() === "activation_patch") {
    job.preset = { type: "activation_patch", node: $("ap-node").value.trim(), from: Number($("ap-from").value) };
    const pos = list($("ap-positions").value);
    if (pos.length) job.preset.positions = pos.map(Number);
  } else if (kind() === "path_patch") {
    const senders = list($("pp-senders").value), receivers = list($("pp-receivers").value);
    if ($("pp-sweep").checked) {
      job.sweep = expand(senders).map((s) => ({ name: s, preset: { type: "path_patch", senders: [s], receivers } }));
    } else {
      job.preset = { type: "path_patch", senders, receivers };
    }
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

// "u -> v" per line (or "u, v" or "u v") -> [[u, v], ...]; blank lines
// and "#" comments are skipped.
function parseEdges(text) {
  const edges = [];
  text.split("\n").forEach((line) => {
    const l = line.replace(/#.*/, "").trim();
    if (!l) return;
    const parts = l.split(/\s*->\s*|\s*,\s*|\s+/).filter(Boolean);
    if (parts.length !== 2) {
      throw { field: `circuit.edges[${edges.length}]`, code: "invalid_edge",
        message: `circuit.edges[${edges.length}]: "${l}" is not "sender -> receiver"` };
    }
    edges.push(parts);
  });
  return edges;
}

// "a0.head*" -> a0.head0 ... a0.head{H-1} (H from the chosen model), for sweeps.
function expand(senders) {
  const m = models[$("model").value], H = m && m.config ? m.config.n_head : 0;
  return senders.flatMap((s) => s.endsWith(".head*") && H
    ? Array.from({ length: H }, (_, h) => s.slice(0, -1) + h) : [s]);
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

async function showGraph(job, variant) {
  try {
    $("graph").innerHTML = await api("GET", `/v1/jobs/${job.id}/graph.svg` + (variant ? `?variant=${variant}` : ""));
  } catch (e) {
    $("graph").textContent = `no graph: ${e.message}`;
  }
}

// A grid: the server's heatmap; a click on a cell shows that cell's path
// graph and top predictions.
async function showHeatmap(job) {
  const box = $("heatmap"), res = job.result, g = res.grid;
  box.classList.remove("hidden");
  try {
    box.innerHTML = await api("GET", `/v1/jobs/${job.id}/heatmap.svg`);
  } catch (e) {
    box.textContent = `no heatmap: ${e.message}`;
    return;
  }
  const cols = g.shape.length > 1 ? g.shape[1] : g.shape[0];
  box.querySelectorAll("rect.cell").forEach((cell) => {
    cell.style.cursor = "pointer";
    cell.addEventListener("click", () => {
      const i = Number(cell.dataset.row) * cols + Number(cell.dataset.col), v = res.sweep[i];
      box.querySelectorAll("rect.cell").forEach((c) => c.setAttribute("stroke", "#ffffff"));
      cell.setAttribute("stroke", "#000000");
      $("variant").value = String(i);
      $("cell").textContent = `${v.name}: ${fmt(cellValue(g, i, cols))}`;
      const tb = $("topk").querySelector("tbody");
      tb.querySelectorAll("tr.cell-row").forEach((r) => r.remove());
      const row = topRow(`patched ${v.name}`, v.outputs.top_k[0]);
      row.className = "cell-row";
      tb.append(row);
      showGraph(job, i);
    });
  });
}

function cellValue(g, i, cols) {
  return g.shape.length > 1 ? g.values[Math.floor(i / cols)][i % cols] : g.values[i];
}

// A sweep: one row per sender, its metric and a bar (blue up, red down).
function showSweep(res) {
  const tb = $("sweep").querySelector("tbody");
  tb.textContent = "";
  const scale = Math.max(1e-9, ...res.sweep.map((v) => Math.abs(Number(v.metric.mean)) || 0));
  for (const v of res.sweep) {
    const tr = document.createElement("tr");
    const bar = document.createElement("span");
    bar.className = "bar " + (v.metric.mean < 0 ? "neg" : "pos");
    bar.style.width = `${(100 * Math.abs(Number(v.metric.mean) || 0)) / scale}px`;
    for (const x of [v.name, fmt(v.metric.mean), bar]) {
      const td = document.createElement("td");
      td.append(x);
      tr.append(td);
    }
    tb.append(tr);
  }
}

// A circuit's picture (circuit.svg), and for a discover or attribution
// job its faithfulness curve, the verified edges and the top scores.
async function showCircuit(job) {
  const res = job.result, d = res.discover, a = res.attribution;
  $("circuit-panel").classList.remove("hidden");
  try {
    $("circuit-svg").innerHTML = await api("GET", `/v1/jobs/${job.id}/circuit.svg`);
  } catch (e) {
    $("circuit-svg").textContent = `no picture: ${e.message}`;
  }
  const row = (tb, cells) => {
    const tr = document.createElement("tr");
    for (const x of cells) {
      const td = document.createElement("td");
      td.append(x);
      tr.append(td);
    }
    tb.append(tr);
    return tr;
  };
  const name = (e) => `${e[0]} \u2192 ${e[1]}`;
  $("curve").classList.toggle("hidden", !d);
  $("verify").classList.toggle("hidden", !d || !d.verify.length);
  if (d) {
    for (const c of d.curve) {
      const use = document.createElement("button");
      use.type = "button";
      use.textContent = "evaluate as a circuit";
      use.disabled = !a || c.edges > a.edges.length; // the result keeps the top `top` edges
      use.addEventListener("click", () => {
        $("ci-edges").value = a.edges.slice(0, c.edges).map((e) => `${e[0]} -> ${e[1]}`).join("\n");
        document.querySelector('input[name="kind"][value="circuit"]').click();
        $("m-normalize").checked = true;
        $("ci-edges").scrollIntoView();
      });
      row($("curve").querySelector("tbody"), [String(c.n), fmt(c.faithfulness), fmt(c.metric), use]);
    }
    for (const v of d.verify) row($("verify").querySelector("tbody"), [name(v.edge), fmt(v.estimate), fmt(v.exact)]);
  }
  $("edges").classList.toggle("hidden", !a);
  if (a) {
    const top = a.edges.slice(0, 20), scale = Math.max(1e-12, ...top.map((e) => Math.abs(e[2])));
    top.forEach((e, i) => {
      const bar = document.createElement("span");
      const effect = e[2] < 0 ? "lowers" : e[2] > 0 ? "raises" : "none";
      bar.className = "bar " + effect; // the picture's colours
      bar.style.width = `${(100 * Math.abs(e[2])) / scale}px`;
      bar.title = effect === "none" ? "a score of 0: no first-order effect" : `patching it ${effect} the metric`;
      row($("edges").querySelector("tbody"), [String(i + 1), name(e), fmt(e[2]), bar]);
    });
  }
}

// Hides and empties the previous run's results.
function clearResults() {
  $("results").classList.add("hidden");
  for (const id of ["metric", "metric-baselines", "stats", "graph", "heatmap", "cell", "circuit-svg"]) $(id).textContent = "";
  $("heatmap").classList.add("hidden");
  $("circuit-panel").classList.add("hidden");
  for (const id of ["curve", "verify", "edges"]) $(id).querySelector("tbody").textContent = "";
  $("sweep").querySelector("tbody").textContent = "";
  $("topk").querySelector("tbody").textContent = "";
}

async function showResult(job) {
  const res = job.result, sweep = res.sweep, grid = res.grid;
  $("results").classList.remove("hidden");
  const m = res.metric, scored = res.attribution !== undefined, circuit = scored || job.kind === "circuit";
  $("metric").textContent = grid ? "one per cell, in the heatmap" : sweep ? "one per sender, below"
    : fmt(m.mean) + (m.normalized !== undefined ? ` (normalized ${fmt(m.normalized)})` : "") +
      (scored ? " (the edges' scores are below)" : "");
  $("metric-label").textContent = scored ? "Metric (input 0's run)" : job.kind === "circuit" ? "Metric (the circuit)" : "Metric (patched run)";
  $("metric-baselines").textContent = "unpatched: " +
    res.baselines.map((b) => `input ${b.input} ${fmt(b.metric.mean)}`).join(", ");
  $("sweep").classList.toggle("hidden", !sweep || !!grid);
  if (sweep && !grid) showSweep(res);
  const tb = $("topk").querySelector("tbody");
  tb.textContent = "";
  for (const b of res.baselines) tb.append(topRow(`input ${b.input}`, b.top_k[0]));
  if (!grid && !scored) for (const v of sweep || [res]) tb.append(topRow(sweep ? `patched ${v.name}` : "patched", v.outputs.top_k[0]));
  if (grid) await showHeatmap(job);
  if (circuit) await showCircuit(job);
  const s = res.stats;
  $("stats").textContent = `${s.values_planned} values planned, ${s.values_computed} computed, ` +
    `${s.values_cached} from the cache, ${s.path_nodes} path nodes` +
    (s.shared_positions ? `, the first ${s.shared_positions} positions computed once` : "") +
    (s.tail_from ? `, the last layer from position ${s.tail_from} on` : "") +
    `; plan ${s.plan_ms.toFixed(1)} ms, ` +
    `run ${s.exec_ms.toFixed(1)} ms` + (s.attribution_ms !== undefined ? `, gradients ${s.attribution_ms.toFixed(1)} ms` : "");
  // a circuit's path tree is the full split: its picture is the circuit's
  $("graph-title").classList.toggle("hidden", circuit);
  if (circuit) return;
  const pick = $("variant");
  pick.textContent = "";
  pick.classList.toggle("hidden", !sweep);
  for (const v of sweep || []) pick.append(new Option(v.name, v.variant));
  pick.onchange = () => showGraph(job, Number(pick.value));
  await showGraph(job, 0);
}

// What a queued job's waiting_for means, in the progress line.
const WAITING = {
  server: "the server (loading models or draining)",
  user_workers: "one of your running jobs to end (your share of the workers)",
  earlier_jobs: "your earlier jobs, queued ahead of this one",
  user_memory: "one of your running jobs to end (your share of the memory)",
  worker: "a free worker",
  memory: "memory (a worker is free, but the running jobs leave too little)",
};

async function run(ev) {
  ev.preventDefault();
  clearErrors();
  clearResults();
  $("run").disabled = true;
  const bar = $("progress");
  try {
    const doc = buildJob();
    localStorage.setItem("npp-token", $("token").value);
    let job = await api("POST", "/v1/jobs", doc);
    const submitted = kind();
    bar.classList.remove("hidden");
    while (!["done", "failed", "cancelled"].includes(job.state)) {
      bar.max = Math.max(1, job.progress.total);
      bar.value = job.progress.done;
      $("progress-text").textContent = job.state === "queued" && job.waiting_for
        ? `queued: waiting for ${WAITING[job.waiting_for] || job.waiting_for}`
        : `${job.state}: ${job.progress.done}/${job.progress.total} ` +
          (submitted === "discover" ? "steps (layer passes, then values)" : "values");
      await new Promise((r) => setTimeout(r, 150));
      job = await api("GET", `/v1/jobs/${job.id}`);
    }
    bar.value = bar.max;
    $("progress-text").textContent = job.state;
    if (job.state !== "done") throw Object.assign({}, job.error, { status: 200 });
    job.kind = submitted;
    await showResult(job);
  } catch (err) {
    showError(err);
  } finally {
    $("run").disabled = false;
  }
}

const models = {};

async function loadModels() {
  try {
    const { models: list } = await api("GET", "/v1/models");
    $("model").textContent = "";
    for (const m of list) {
      models[m.name] = m;
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = m.config ? `${m.name} (${m.config.n_layer} layers, ${m.config.n_head} heads)` : `${m.name} (loading)`;
      $("model").append(o);
    }
    $("server-status").textContent = "";
    countTokens();
  } catch (e) {
    $("server-status").textContent = e.status === 401 || e.status === 403 ? "enter a valid token" : e.message;
  }
}

// Each input line's token count, as the server's tokenizer counts it.
let countTimer = null;
async function countTokens() {
  const lines = $("inputs").value.split("\n").filter((l) => l.trim() !== "").slice(0, 32);
  try {
    const n = await Promise.all(lines.map((text) => api("POST", "/v1/tokenize", { model: $("model").value, text })
      .then((r) => r.ids.length)));
    const same = n.every((x) => x === n[0]);
    $("token-counts").textContent = n.map((x, i) => `input ${i}: ${x} tokens`).join(", ") +
      (same ? "" : " (they differ: a job needs one length for every input)");
  } catch (e) {
    $("token-counts").textContent = "";
  }
}
$("inputs").addEventListener("input", () => {
  clearTimeout(countTimer);
  countTimer = setTimeout(countTokens, 300);
});

// A random unit vector of the model's width, for steering.
$("st-random").addEventListener("click", () => {
  const m = models[$("model").value], C = m && m.config ? m.config.n_embd : 0;
  const v = Array.from({ length: C }, () => Math.random() - 0.5);
  const norm = Math.hypot(...v) || 1;
  $("st-vector").value = v.map((x) => (x / norm).toFixed(5)).join(", ");
});
$("m-type").addEventListener("change", metricFields);

document.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", () => {
  document.querySelectorAll(".kind").forEach((d) => d.classList.add("hidden"));
  $("kind-" + kind()).classList.remove("hidden");
}));
$("job").addEventListener("submit", run);
$("token").value = localStorage.getItem("npp-token") || "";
$("token").addEventListener("change", loadModels);
loadModels();
