// End-to-end test of nppd's web UI in headless Chromium (Debian's, driven
// by playwright-core): a person's steps - enter the token, run the default
// activation patch, read the metric and predictions - checked against the
// API's answer for the same job; then a bad node, whose error must appear
// next to the node field; then a sweep over every head of layer 0; then a
// layer x head grid (its heatmap against the API's values), an ablation,
// steering, a circuit discovery (its tables against the API's) and the
// circuit of its top edges. Saves screenshots as test artifacts.
//   NPPD=... MODEL=... SHOT=out.png node ui.test.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const NPPD = process.env.NPPD, MODEL = process.env.MODEL;
const SHOT = process.env.SHOT || "web-ui.png";
const TOKEN = "ui-test-token-42";
let passed = 0, failed = 0;
const check = (name, ok, detail = "") => {
  console.log(`${ok ? "ok  " : "FAIL"} ${name} ${detail}`);
  ok ? passed++ : failed++;
};

const port = await new Promise((res) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); });
});
const dir = mkdtempSync(join(tmpdir(), "npp-ui-"));
writeFileSync(join(dir, "tokens"), `ui ${TOKEN}\n`);
const server = spawn(NPPD, ["--model", `tiny=${MODEL}`, "--listen", `127.0.0.1:${port}`,
  "--token-file", join(dir, "tokens")], { stdio: ["ignore", "ignore", "inherit"] });
const base = `http://127.0.0.1:${port}`;
for (let i = 0; i < 300; i++) {
  try { if ((await fetch(base + "/readyz")).status === 200) break; } catch (e) { /* not yet */ }
  await new Promise((r) => setTimeout(r, 100));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 1400 } });
  await page.goto(base + "/");
  check("the page loads with the rule syntax explained", (await page.textContent("#kind-rules")).includes("Rule syntax"));
  await page.fill("#token", TOKEN);
  await page.dispatchEvent("#token", "change");
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0);
  check("models listed after entering the token", (await page.textContent("#model")).includes("tiny (2 layers"));
  await page.fill("#inputs", "The capital of Spain is\nThe capital of Italy is");
  await page.fill("#ap-node", "a1.head");
  await page.fill("#m-target", " Madrid");
  await page.fill("#m-baseline", " Rome");
  await page.click("#run");
  await page.waitForFunction(() => document.getElementById("metric").textContent !== "", null, { timeout: 60000 });
  const shown = await page.textContent("#metric");
  const rows = await page.$$eval("#topk tbody tr", (trs) => trs.map((tr) => Array.from(tr.cells).map((c) => c.textContent)));

  // The same job through the API.
  const job = {
    model: "tiny", inputs: ["The capital of Spain is", "The capital of Italy is"],
    outputs: { top_k: 5, baselines: true },
    metric: { type: "logit_diff", target: " Madrid", baseline: " Rome" },
    preset: { type: "activation_patch", node: "a1.head", from: 1 },
  };
  const r = await fetch(base + "/v1/jobs?wait=60", {
    method: "POST", headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(job),
  });
  const api = (await r.json()).result;
  check("metric shown = the API's", shown === api.metric.mean.toFixed(4), `(${shown} vs ${api.metric.mean})`);
  const top = api.outputs.top_k[0][0].tokens[0];
  const patched = rows.find((row) => row[0] === "patched");
  check("patched top prediction shown = the API's", patched && patched[1].startsWith(`${JSON.stringify(top.token)} ${top.logprob.toFixed(4)}`),
    patched ? patched[1].slice(0, 60) : "no row");
  check("one row per input plus the patched run", rows.length === 3, JSON.stringify(rows.map((x) => x[0])));
  const b1 = api.baselines[1].metric.mean.toFixed(4);
  check("unpatched metrics shown", (await page.textContent("#metric-baselines")).includes(`input 1 ${b1}`));
  check("the path graph is drawn", (await page.$$("#graph svg g.node")).length > 5);
  await page.screenshot({ path: SHOT, fullPage: true });
  console.log(`screenshot: ${SHOT}`);

  // A server error lands next to the field it names.
  await page.fill("#ap-node", "a7.head");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector('#kind-activation_patch .err').textContent !== "");
  const err = await page.textContent("#kind-activation_patch .err");
  check("error shown beside the node field", err.includes("not a node of this model") && err.includes("422"), err);
  check("the node field is marked", await page.$eval("#ap-node", (e) => e.classList.contains("invalid")));
  // Mismatched inputs: the error goes to the inputs box.
  await page.fill("#ap-node", "a1.head");
  await page.fill("#inputs", "The capital of Spain is\nRome");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector('.err[data-for="inputs"]').textContent !== "");
  check("input length error beside the inputs", (await page.textContent('.err[data-for="inputs"]')).includes("tokens"));

  // A sweep: one path-patching run per sender, "a0.head*" for every head.
  await page.fill("#inputs", "The capital of Spain is\nThe capital of Italy is");
  await page.check('input[name="kind"][value="path_patch"]');
  await page.fill("#pp-senders", "a0.head*");
  await page.fill("#pp-receivers", "a1.head2.q");
  await page.check("#pp-sweep");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelectorAll("#sweep tbody tr").length > 0, null, { timeout: 60000 });
  const sweepRows = await page.$$eval("#sweep tbody tr", (trs) => trs.map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent]));
  const sj = {
    model: "tiny", inputs: job.inputs, metric: job.metric,
    sweep: [0, 1, 2, 3].map((h) => ({ name: `a0.head${h}`, preset: { type: "path_patch", senders: [`a0.head${h}`], receivers: ["a1.head2.q"] } })),
  };
  const sr = await fetch(base + "/v1/jobs?wait=60", {
    method: "POST", headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(sj),
  });
  const want = (await sr.json()).result.sweep.map((v) => [v.name, v.metric.mean.toFixed(4)]);
  check("sweep: one row per head with the API's metric", JSON.stringify(sweepRows) === JSON.stringify(want),
    JSON.stringify(sweepRows));
  check("sweep: a patched top-k row per variant",
    (await page.$$eval("#topk tbody tr", (trs) => trs.map((tr) => tr.cells[0].textContent))).filter((x) => x.startsWith("patched a0.head")).length === 4);
  const g0 = await page.innerHTML("#graph");
  await page.selectOption("#variant", "2");
  await page.waitForFunction((g) => document.getElementById("graph").innerHTML !== g, g0);
  check("sweep: the graph follows the chosen variant", (await page.$$("#graph svg g.node")).length > 5);
  await page.screenshot({ path: SHOT.replace(/\.png$/, "-sweep.png"), fullPage: true });
  // A variant's error lands beside the same field as a single run's.
  await page.fill("#pp-receivers", "a0.head1.q");
  await page.fill("#pp-senders", "a1.head0");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector("#kind-path_patch .err").textContent !== "");
  const serr = await page.textContent("#kind-path_patch .err");
  check("sweep: a variant's error beside the senders", serr.includes("sweep[0].preset") && serr.includes("not upstream"), serr);

  // A grid: activation patching of every head, normalized logit; the
  // heatmap's cells carry the API's values, a click shows that cell's graph.
  const post = async (doc) => (await (await fetch(base + "/v1/jobs?wait=60", {
    method: "POST", headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(doc),
  })).json()).result;
  await page.fill("#inputs", "The capital of Spain is\nThe capital of Italy is");
  await page.waitForFunction(() => document.getElementById("token-counts").textContent.includes("input 1: 5 tokens"));
  check("token count per input line", (await page.textContent("#token-counts")) === "input 0: 5 tokens, input 1: 5 tokens");
  await page.check('input[name="kind"][value="grid"]');
  await page.selectOption("#m-type", "logit");
  await page.fill("#m-target", " Madrid");
  await page.check("#m-normalize");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelectorAll("#heatmap rect.cell").length > 0, null, { timeout: 60000 });
  const cells = await page.$$eval("#heatmap rect.cell", (rs) => rs.map((r) => [Number(r.dataset.row), Number(r.dataset.col), Number(r.dataset.value)]));
  const gapi = (await post({
    model: "tiny", inputs: job.inputs, metric: { type: "logit", token: " Madrid", normalize: true },
    grid: { node: "a{layer}.head{head}", layer: "all", head: "all", preset: { type: "activation_patch", from: 1 } },
  })).grid;
  check("grid: one heatmap cell per layer and head", cells.length === 8, String(cells.length));
  check("grid: each cell's value = the API's", cells.every(([r, c, v]) => Math.abs(v - gapi.values[r][c]) <= 1e-6 * Math.max(1, Math.abs(v))),
    JSON.stringify(cells.slice(0, 3)));
  const before = await page.innerHTML("#graph");
  await page.click('#heatmap rect.cell[data-row="1"][data-col="2"]');
  await page.waitForFunction((g) => document.getElementById("graph").innerHTML !== g, before);
  check("grid: a click shows the cell's graph and name", (await page.textContent("#cell")).startsWith("a1.head2:") &&
    (await page.$$("#graph svg g.node")).length > 5, await page.textContent("#cell"));
  check("graph boxes carry their full path as a tooltip",
    (await page.$$eval("#graph svg a", (as) => as.map((a) => a.getAttribute("xlink:title") || a.getAttribute("title") || ""))).some((t) => t.includes("ln_final/f1/a1/a1.head/a1.head2")));
  await page.screenshot({ path: SHOT.replace(/\.png$/, "-grid.png"), fullPage: true });

  // Ablation: the metric shown = the API's; the old heatmap is gone.
  await page.uncheck("#m-normalize");
  await page.check('input[name="kind"][value="ablate"]');
  await page.fill("#ab-node", "a1.head2");
  await page.selectOption("#ab-value", "mean");
  await page.click("#run");
  await page.waitForFunction(() => document.getElementById("metric").textContent !== "", null, { timeout: 60000 });
  const ab = await post({ model: "tiny", inputs: job.inputs, outputs: { top_k: 5, baselines: true },
    metric: { type: "logit", token: " Madrid" }, preset: { type: "ablate", node: "a1.head2", value: "mean" } });
  check("ablation: metric shown = the API's", (await page.textContent("#metric")) === ab.metric.mean.toFixed(4),
    await page.textContent("#metric"));
  check("a new run clears the previous results (no heatmap)", await page.$eval("#heatmap", (h) => h.classList.contains("hidden")));
  // Steering along a random direction moves the metric.
  await page.check('input[name="kind"][value="steer"]');
  await page.click("#st-random");
  await page.click("#run");
  await page.waitForFunction(() => document.getElementById("metric").textContent !== "", null, { timeout: 60000 });
  const steered = Number(await page.textContent("#metric"));
  const plainLogit = ab.baselines[0].metric.mean;
  check("steering: a metric, different from the unpatched run's", Number.isFinite(steered) && Math.abs(steered - plainLogit) > 1e-4,
    `${steered} vs ${plainLogit}`);

  // Circuit discovery: the tables show the API's curve, verified edges and
  // scores, and the picture is drawn; a curve row's button turns the top n
  // edges into a circuit job whose faithfulness is the curve's.
  await page.check('input[name="kind"][value="discover"]');
  await page.selectOption("#m-type", "logit");
  await page.fill("#m-target", " Madrid");
  await page.fill("#dc-steps", "3");
  await page.fill("#dc-top-n", "2,4");
  await page.fill("#dc-verify", "3");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelectorAll("#curve tbody tr").length > 0, null, { timeout: 60000 });
  const dapi = await post({ model: "tiny", inputs: job.inputs, outputs: { top_k: 5, baselines: true },
    metric: { type: "logit", token: " Madrid" }, discover: { method: "eap-ig", steps: 3, top_n: [2, 4], verify: 3 } });
  const table = (id) => page.$$eval(`#${id} tbody tr`, (trs) => trs.map((tr) => Array.from(tr.cells).slice(0, 3).map((c) => c.textContent)));
  const f4 = (x) => x.toFixed(4), arrow = (e) => `${e[0]} \u2192 ${e[1]}`;
  check("discover: the faithfulness curve = the API's", JSON.stringify(await table("curve")) ===
    JSON.stringify(dapi.discover.curve.map((c) => [String(c.n), f4(c.faithfulness), f4(c.metric)])), JSON.stringify(await table("curve")));
  check("discover: each verified edge's estimate and exact effect = the API's", JSON.stringify(await table("verify")) ===
    JSON.stringify(dapi.discover.verify.map((v) => [arrow(v.edge), f4(v.estimate), f4(v.exact)])), JSON.stringify(await table("verify")));
  check("discover: the top 20 edges and their scores = the API's", JSON.stringify(await table("edges")) ===
    JSON.stringify(dapi.attribution.edges.slice(0, 20).map((e, i) => [String(i + 1), arrow(e), f4(e[2])])));
  const drawn = await page.$$eval("#circuit-svg svg path.edge", (ps) => ps.map((p) => Number(p.dataset.score)));
  check("discover: the circuit picture draws scored edges and the curve", drawn.length > 0 && drawn.every(Number.isFinite) &&
    (await page.$$("#circuit-svg svg g.curve circle.point")).length === 2, String(drawn.length));
  check("discover: no path graph for a circuit", await page.$eval("#graph-title", (h) => h.classList.contains("hidden")));
  await page.screenshot({ path: SHOT.replace(/\.png$/, "-discover.png"), fullPage: true });
  await page.click("#curve tbody tr:nth-child(2) button");
  check("the curve's button fills a circuit of its top n edges", (await page.inputValue("#ci-edges")).split("\n").join("|") ===
    dapi.attribution.edges.slice(0, dapi.discover.curve[1].edges).map((e) => `${e[0]} -> ${e[1]}`).join("|") &&
    (await page.isChecked('input[name="kind"][value="circuit"]')) && (await page.isChecked("#m-normalize")));
  await page.click("#run");
  await page.waitForFunction(() => document.getElementById("metric").textContent.includes("normalized"), null, { timeout: 60000 });
  const faith = Number(/normalized (-?[0-9.]+)/.exec(await page.textContent("#metric"))[1]);
  check("circuit: its faithfulness = the curve's", Math.abs(faith - dapi.discover.curve[1].faithfulness) < 1e-3,
    `${faith} vs ${dapi.discover.curve[1].faithfulness}`);
  // the metric is shown before the picture arrives (showResult awaits it after)
  const pictured = await page.waitForFunction(() => document.getElementById("stats").textContent !== "", null, { timeout: 60000 })
    .then(() => true, () => false);
  check("circuit: its picture is drawn", pictured && (await page.$$("#circuit-svg svg path.edge")).length > 0);
  await page.fill("#ci-edges", "emb -> ln_final\na1.head0 -> a1.head2.k");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector("#kind-circuit .err").textContent !== "");
  const cerr = await page.textContent("#kind-circuit .err");
  check("circuit: a bad edge's error names it, beside the edges", cerr.includes("circuit.edges[1]") && cerr.includes("not upstream") &&
    await page.$eval("#ci-edges", (e) => e.classList.contains("invalid")), cerr);
  await page.fill("#ci-edges", "emb ln_final\na1.head0");
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector("#kind-circuit .err").textContent.includes("circuit.edges[1]"));
  check("circuit: a line that is not an edge is named before submitting", (await page.textContent("#kind-circuit .err")).includes("sender -> receiver"));
} catch (e) {
  check("the UI test ran to the end", false, String(e));
} finally {
  await browser.close();
  server.kill("SIGTERM");
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
