"""Python client for nppd, the nano-path-patching service.

    import npp
    from npp.rules import last, contains

    client = npp.connect("http://127.0.0.1:8080")          # token="..." if needed
    m = client.model()                                      # or client.model("gpt2")
    res = m.run(["The capital of Spain is", "The capital of Italy is"],
                which=[(contains("a1"), 1)], branch=[(last("a1"), True)])
    res.top_k()            # [(token, logprob), ...] for example 0, last position
    res.hidden_states      # numpy array (batch, tokens, width) if numpy is installed
    m.run(batch, activations=["a0", "a1.pattern"]).activations["a1.pattern"]
    res.visualise_path("paths.svg")

    # a sweep: many variants in one job, shared values computed once
    sw = m.sweep(["When Mary and John went to the store, John gave a drink to",
                  "When Mary and John went to the store, Mary gave a drink to"],
                 [("a%d.head%d" % (l, h), npp.path_patch("a%d.head%d" % (l, h), "ln_final"))
                  for l in range(12) for h in range(12)],
                 metric={"type": "logit_diff", "target": " Mary", "baseline": " John"})
    sw.metrics()           # {"a0.head0": ..., ...}; sw.variants[i] is like a Result

Only the standard library is required; numpy is used for arrays when
present. Server errors raise NppError(status, code, field, message).
"""
import base64
import hashlib
import http.client
import json
import struct
import sys
import time
import urllib.parse

from . import rules  # noqa: F401  (npp.rules)
from .rules import ablate, activation_patch, path_patch, steer  # noqa: F401

try:
    import numpy as _np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    _np = None

__all__ = ["connect", "Client", "Model", "Job", "Result", "Variant", "NppError", "rules",
           "activation_patch", "path_patch"]


class NppError(Exception):
    """An error answer from the server: HTTP status, error code, the request
    field it concerns ("" if none) and the server's message."""

    def __init__(self, status, code, field, message):
        super().__init__("%s %s%s: %s" % (status, code, " (%s)" % field if field else "", message))
        self.status, self.code, self.field, self.message = status, code, field, message


def connect(url="http://127.0.0.1:8080", token=None, timeout=600):
    return Client(url, token, timeout)


def _tensor(t):
    """A result tensor as a numpy array (or nested lists without numpy)."""
    if t is None:
        return None
    if "npy" in t and _np is not None:
        return _np.load(t["npy"])
    raw = base64.b64decode(t["data"])
    shape = t["shape"]
    if _np is not None:
        return _np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
    flat = list(struct.unpack("<%df" % (len(raw) // 4), raw))
    for d in reversed(shape[1:]):
        flat = [flat[i:i + d] for i in range(0, len(flat), d)]
    return flat


class Svg(str):
    """SVG text (a path graph or a heatmap) that Jupyter draws inline."""

    def _repr_svg_(self):
        return str(self)


def _token_logprobs(t):
    """outputs.token_logprobs as ([token texts], values [batch, positions,
    tokens]); a padding row (an uneven batch) is NaN."""
    if t is None:
        return None
    toks = [x.get("token") for x in t["tokens"]]
    n = len(toks)
    rows = [[r if r is not None else [float("nan")] * n for r in ex] for ex in t["values"]]
    return toks, (_np.array(rows, dtype=float) if _np is not None else rows)


class Client:
    def __init__(self, url, token=None, timeout=600):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.token, self.timeout = token, timeout

    # Behind nginx with replicas (docs/deploy.md), a replica that is down or
    # restarting answers 502 or 503; new work is retried (nginx sends it to
    # another replica), and so is a read of a job whose owner comes back.
    RETRY_STATUSES = (502, 503)

    def _request(self, method, path, body=None, raw=False, timeout=None, headers=None,
                 retries=5):
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        h.update(headers or {})
        payload = json.dumps(body) if body is not None else None
        for attempt in range(retries + 1):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
            try:
                conn.request(method, path, body=payload, headers=h)
                r = conn.getresponse()
                data = r.read()
            finally:
                conn.close()
            if r.status not in self.RETRY_STATUSES or attempt == retries:
                break
            code = None
            try:
                code = json.loads(data)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                pass
            if code in ("draining", "loading") or r.status == 502:  # comes back, or another will
                time.sleep(min(float(r.getheader("Retry-After") or 1), 5.0))
                continue
            break
        if r.status >= 400:
            try:
                e = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                e = {"code": "http_%d" % r.status, "field": "", "message": data.decode("utf-8", "replace")}
            raise NppError(r.status, e.get("code", ""), e.get("field", ""), e.get("message", ""))
        return (r.status, data) if raw else (r.status, json.loads(data))

    def models(self):
        """The models the server holds: [{"name", "config", "device", ...}]."""
        return self._request("GET", "/v1/models")[1]["models"]

    def model(self, name=None):
        """A model by name (default: the server's first)."""
        ms = self.models()
        if name is None:
            return Model(self, ms[0]["name"], ms[0])
        for m in ms:
            if m["name"] == name:
                return Model(self, name, m)
        raise NppError(404, "unknown_model", "model", "no model named %r (have %s)"
                       % (name, ", ".join(m["name"] for m in ms)))

    def job(self, job_id):
        """A handle on an existing job."""
        return Job(self, job_id)


class Model:
    def __init__(self, client, name, info):
        self.client, self.name, self.info = client, name, info

    def __repr__(self):
        return "Model(%r, %s)" % (self.name, self.info.get("config"))

    def tokenize(self, text):
        return self.client._request("POST", "/v1/tokenize", {"model": self.name, "text": text})[1]["ids"]

    def to_str_tokens(self, text):
        """The text's tokens as strings (" Paris", with GPT-2's leading space)."""
        return self.client._request("POST", "/v1/tokenize",
                                    {"model": self.name, "text": text})[1]["tokens"]

    def job_document(self, inputs, which=None, branch=None, outputs=None, metric=None,
                     preset=None, limits=None, sweep=None, activations=None, circuit=None):
        """The JSON document run() and sweep() send (see docs/jobs.md).
        activations: node names of input 0's plain run to return (or
        {"nodes": [...], "input": K}); the Result has them as .activations.
        circuit: edges [(sender, receiver), ...] that carry input 0's run,
        every other edge input 1's plain run."""
        if isinstance(inputs, (str, bytes)):
            # list("a string") would be one input per character
            raise TypeError("inputs: a list of inputs (texts, token id lists or batches), "
                            "not a bare string; write [%r]" % (inputs[:40],))
        doc = {"model": self.name, "inputs": list(inputs)}
        if which is not None:
            doc["which"] = rules.rules(which, "input")
        if branch is not None:
            doc["branch"] = rules.rules(branch, "split")
        if preset is not None:
            doc["preset"] = preset
        if circuit is not None:
            doc["circuit"] = _circuit(circuit)
        if sweep is not None:
            doc["sweep"] = [_variant(v) for v in sweep]
        for k, v in (("outputs", outputs), ("metric", metric), ("limits", limits)):
            if v is not None:
                doc[k] = v
        if activations is not None:
            if isinstance(activations, str):
                raise TypeError("activations: a list of node names, not a bare string; "
                                "write [%r]" % activations)
            acts = activations if isinstance(activations, dict) else {"nodes": list(activations)}
            doc["outputs"] = dict(doc.get("outputs") or {}, activations=acts)
        return doc

    def submit(self, inputs, **kw):
        """Queues a job; returns a Job handle at once. The X-Npp-Affinity
        header (the model and the inputs) lets a load balancer send related
        jobs to the replica whose cache already holds their values."""
        return self._post(self.job_document(inputs, **kw))

    def _post(self, doc):
        """POSTs a job document with its X-Npp-Affinity key; its Job."""
        key = hashlib.sha256(json.dumps([self.name, doc["inputs"]], sort_keys=True).encode())
        _, body = self.client._request("POST", "/v1/jobs", doc,
                                       headers={"X-Npp-Affinity": key.hexdigest()[:32]})
        return Job(self.client, body["id"], body)

    def run(self, inputs, which=None, branch=None, outputs=None, metric=None, preset=None,
            limits=None, progress=None, activations=None, circuit=None):
        """Runs a job and returns its Result. which / branch: ordered lists of
        (pattern, value) pairs, first match wins: which values are input
        indices, branch values True, False, "heads" or "positions". progress:
        show a progress bar (default: only for jobs that take a while).
        activations: node names to return as .activations, circuit: edges
        (see job_document). As in the original library, .hidden_states (after ln_f) come back
        unless outputs says "hidden_states": False."""
        outputs = dict(outputs or {})
        outputs.setdefault("hidden_states", True)
        job = self.submit(inputs, which=which, branch=branch, outputs=outputs, metric=metric,
                          preset=preset, limits=limits, activations=activations, circuit=circuit)
        return job.wait(progress=progress)

    def grid(self, inputs, preset, metric, layer=None, head=None, pos=None, node=None,
             outputs=None, limits=None, progress=None):
        """Runs a grid: one variant per cell of the axes given ("all" or a
        list), preset fields holding "{layer}", "{head}", "{pos}" where the
        cell's values go, e.g. m.grid(prompts, npp.activation_patch("a{layer}.head{head}"),
        metric, layer="all", head="all"). Returns a Result: .grid() gives
        the values and axes, .heatmap() the SVG."""
        g = {"preset": preset}
        for k, v in (("layer", layer), ("head", head), ("pos", pos), ("node", node)):
            if v is not None:
                g[k] = v
        doc = self.job_document(inputs, outputs=outputs, metric=metric, limits=limits)
        doc["grid"] = g
        return self._post(doc).wait(progress=progress)

    def attribute(self, inputs, metric, method="eap", steps=None, level="edges", top=None,
                  outputs=None, progress=None):
        """Edge attribution patching of inputs[0] (clean) against inputs[1]
        (corrupted): every edge's score for the metric (see "attribution" in
        docs/jobs.md). Returns a Result whose .attribution holds the scores."""
        att = {"method": method, "level": level}
        if steps is not None:
            att["steps"] = steps
        if top is not None:
            att["top"] = top
        return self._extra(inputs, metric, "attribution", att, outputs, progress)

    def discover(self, inputs, metric, method="eap-ig", steps=None, top_n=None, verify=None,
                 top=None, outputs=None, progress=None):
        """Attribution, then the top `verify` edges patched exactly one by
        one and the circuit of the top n edges evaluated for each n of top_n
        (a faithfulness curve). Returns a Result: .attribution, .discover
        ({"verify": [...], "curve": [...]}), .circuit_svg()."""
        d = {"method": method}
        for k, v in (("steps", steps), ("top_n", top_n), ("verify", verify), ("top", top)):
            if v is not None:
                d[k] = list(v) if k == "top_n" else v
        return self._extra(inputs, metric, "discover", d, outputs, progress)

    def _extra(self, inputs, metric, key, value, outputs, progress):
        doc = self.job_document(inputs, outputs=outputs or {"top_k": 0}, metric=metric)
        doc[key] = value
        return self._post(doc).wait(progress=progress)

    def sweep(self, inputs, variants, outputs=None, metric=None, limits=None, progress=None):
        """Runs many variants of one experiment as one job: the variants share
        the inputs, outputs and metric, and every value two of them need is
        computed once. Each variant is a preset (npp.path_patch(...)), a dict
        with "preset" or "which"/"branch" (pairs, as run() takes them) and an
        optional "name", or a (name, variant) pair. Returns a Result whose
        .variants hold each variant's outputs, in order."""
        job = self.submit(inputs, sweep=variants, outputs=outputs, metric=metric, limits=limits)
        return job.wait(progress=progress)


def _pyplot(method, instead):
    """matplotlib.pyplot, or an ImportError saying what to use without it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("%s needs matplotlib (Debian: python3-matplotlib); %s without it"
                          % (method, instead)) from None
    return plt


def _circuit(c):
    """A circuit as the server takes it: {"edges": [[u, v], ...]} from a dict
    or from the edges themselves (pairs; a third item, such as a score, is
    dropped)."""
    if isinstance(c, dict):
        return c
    if isinstance(c, (str, bytes)):
        raise TypeError("circuit: a list of edges (sender, receiver), not a bare string")
    return {"edges": [[e[0], e[1]] for e in c]}


def _variant(v):
    """One sweep variant as the server takes it."""
    if isinstance(v, tuple):
        name, v = v
        return dict(_variant(v), name=name)
    if "type" in v:  # a preset
        return {"preset": v}
    d = dict(v)
    if "circuit" in d:
        d["circuit"] = _circuit(d["circuit"])
    for key, value in (("which", "input"), ("branch", "split")):
        if d.get(key) and isinstance(d[key][0], tuple):
            d[key] = rules.rules(d[key], value)
    return d


class Attribution:
    """An attribution's scores, highest |score| first: .edges [(sender,
    receiver, score)] (or .nodes [(sender, score)] for level "nodes"),
    .scores (a numpy array, in that order), .method, .steps, .count (how
    many were scored; the list may be cut to the job's "top")."""

    def __init__(self, raw):
        self.raw = raw
        self.method, self.steps, self.level = raw["method"], raw["steps"], raw["level"]
        self.count = raw["count"]
        self.edges = [tuple(e) for e in raw.get("edges", [])]
        self.nodes = [tuple(e) for e in raw.get("nodes", [])]
        rows = self.edges or self.nodes
        s = [r[-1] for r in rows]
        self.scores = _np.array(s, dtype=float) if _np is not None else s

    def __len__(self):
        return len(self.edges or self.nodes)

    def __iter__(self):
        return iter(self.edges or self.nodes)

    def top(self, n):
        """The n highest edges as (sender, receiver) pairs: a circuit
        (m.run(..., circuit=res.attribution.top(10))). ValueError for a
        node-level attribution (it has no edges) and where the result keeps
        fewer than n edges (the job's "top")."""
        if self.level == "nodes":
            raise ValueError("top(): a node-level attribution scores senders, not edges; "
                             "attribute(..., level=\"edges\") gives a circuit")
        if n > len(self.edges) and len(self.edges) < self.count:
            raise ValueError("top(%d): the result keeps the top %d of %d edges (the job's "
                             "\"top\"); ask for top >= %d" % (n, len(self.edges), self.count, n))
        return [e[:2] for e in self.edges[:n]]

    def __repr__(self):
        return "<Attribution %s: %d of %d %s>" % (self.method, len(self), self.count, self.level)


class Job:
    """A submitted job: .status(), .wait(), .cancel(), .result."""

    def __init__(self, client, job_id, body=None):
        self.client, self.id, self._body = client, job_id, body

    def status(self):
        """The job as the server shows it (state, progress, result or error)."""
        self._body = self.client._request("GET", "/v1/jobs/" + self.id)[1]
        return self._body

    def cancel(self):
        self._body = self.client._request("DELETE", "/v1/jobs/" + self.id)[1]
        return self._body

    def wait(self, progress=None, timeout=None):
        """Blocks until the job ends; returns its Result (or raises NppError
        for a failed or cancelled job). Shows a progress bar from the events
        stream: tqdm if installed, else a plain text bar on stderr."""
        deadline = time.time() + (timeout or self.client.timeout)
        body = self.status()
        if body["state"] not in ("done", "failed", "cancelled"):
            if progress is not False:
                body = self._wait_in_queue(body, deadline)
            if progress is not False and body["state"] not in ("done", "failed", "cancelled"):
                self._follow_events(show=progress)
            while body["state"] not in ("done", "failed", "cancelled"):
                if time.time() > deadline:
                    raise TimeoutError("job %s still %s" % (self.id, body["state"]))
                time.sleep(0.05)
                body = self.status()
        if body["state"] != "done":
            e = body.get("error", {})
            raise NppError(200, e.get("code", body["state"]), e.get("field", ""),
                           e.get("message", "the job %s" % body["state"]))
        return Result(self.client, body)

    @property
    def result(self):
        return self.wait(progress=False)

    def _wait_in_queue(self, body, deadline):
        """Polls while the job is queued; once it has waited a second, says
        on stderr what it waits for (its waiting_for), again when that
        changes."""
        t0, said = time.time(), None
        while body["state"] == "queued":
            why = body.get("waiting_for")
            if why and why != said and time.time() - t0 >= 1.0:
                sys.stderr.write("npp: job %s queued, waiting for %s\n"
                                 % (self.id, _WAITING.get(why, why)))
                said = why
            if time.time() > deadline:
                raise TimeoutError("job %s still queued" % self.id)
            time.sleep(0.25)  # a queue's waits are long: four status requests a second
            body = self.status()
        return body

    def _follow_events(self, show=None):
        """Reads the SSE stream until the final event, drawing a bar."""
        bar = _Bar(show)
        conn = http.client.HTTPConnection(self.client.host, self.client.port,
                                          timeout=self.client.timeout)
        headers = {"Authorization": "Bearer " + self.client.token} if self.client.token else {}
        try:
            conn.request("GET", "/v1/jobs/%s/events" % self.id, headers=headers)
            r = conn.getresponse()
            if r.status != 200:
                return
            event = None
            for line in r:
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "progress":
                    d = json.loads(line[6:])
                    bar.update(d["done"], d["total"])
                elif line.startswith("data: "):
                    break  # the final event
        except (OSError, http.client.HTTPException):
            pass  # the caller polls
        finally:
            bar.close()
            conn.close()


# What a queued job's waiting_for means (docs/server.md).
_WAITING = {
    "server": "the server (loading models or draining)",
    "user_workers": "one of your running jobs to end (your share of the workers)",
    "earlier_jobs": "your earlier jobs, queued ahead of this one",
    "user_memory": "one of your running jobs to end (your share of the memory)",
    "worker": "a free worker",
    "memory": "memory (a worker is free, but the running jobs leave too little)",
}


class _Bar:
    """tqdm when installed, else a plain text bar; quiet for quick jobs
    unless asked (show=True)."""

    def __init__(self, show):
        self.show, self.t0, self.bar, self.drawn = show, time.time(), None, False

    def update(self, done, total):
        if self.show is None and time.time() - self.t0 < 1.0:
            return
        if self.show is False or total <= 0:
            return
        try:
            from tqdm import tqdm
            if self.bar is None:
                self.bar = tqdm(total=total, unit="value", desc="npp")
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
            return
        except ImportError:
            pass
        width = 30
        fill = int(width * done / total)
        sys.stderr.write("\rnpp [%s%s] %d/%d values" % ("#" * fill, "." * (width - fill), done, total))
        sys.stderr.flush()
        self.drawn = True

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.drawn:
            sys.stderr.write("\n")


class _Patched:
    """The outputs of one patched run: a job's, or one variant's of a sweep."""

    def _load(self, raw):
        self._outputs = out = raw["outputs"]
        self.positions = out["positions"]
        self.hidden_states = _tensor(out.get("hidden_states"))
        self.logits = _tensor(out.get("logits"))
        # ([token texts], log-probs [batch, positions, tokens])
        self.token_logprobs = _token_logprobs(out.get("token_logprobs"))
        m = raw.get("metric")
        self.metric = m["mean"] if m else None
        self.metric_per_example = m["per_example"] if m else None
        self.rules = raw["rules"]

    def top_k(self, example=0, position=-1):
        """[(token text, logprob), ...] at one position (an index into the
        requested positions; -1 is the last)."""
        if self._outputs is None:
            raise ValueError("a sweep's outputs are per variant: use .variants[i].top_k()")
        row = self._outputs["top_k"][example][position]
        return [(t["token"], t["logprob"]) for t in row["tokens"]]


class Variant(_Patched):
    """One variant of a sweep: .name, .index, and a Result's outputs."""

    def __init__(self, result, raw):
        self.result, self.index, self.name = result, raw["variant"], raw.get("name")
        self._load(raw)

    def visualise_path(self, filename=None):
        """This variant's path tree as SVG text; also written to filename."""
        return self.result.visualise_path(filename, variant=self.index)

    def __repr__(self):
        return "Variant(%d, name=%r, metric=%r)" % (self.index, self.name, self.metric)


class Result(_Patched):
    """A finished job's answer. .raw is the server's JSON. A sweep's has
    .variants (a list of Variant) instead of its own outputs."""

    def __init__(self, client, body):
        self.client, self.job = client, body
        self.id = body["id"]
        self.raw = body["result"]
        self.stats = self.raw["stats"]
        self.baselines = self.raw.get("baselines")
        self.lengths = self.raw.get("lengths")
        att = self.raw.get("attention") or (self.raw.get("outputs") or {}).get("attention")
        # (input, layer) -> probabilities [batch, heads, tokens, tokens] of its plain run;
        # ("patched", layer) -> the patched run's (a job's, not a sweep's)
        self.attention = {(a.get("input", a.get("run")), a["layer"]): _tensor(a["probs"])
                          for a in att or []}
        acts = self.raw.get("activations") or (self.raw.get("outputs") or {}).get("activations")
        # name -> array ([batch, tokens, width], or [batch, heads, tokens, tokens]
        # for a{i}.pattern); padding rows of shorter examples are zeros
        self.activations = {k: _tensor(v) for k, v in (acts or {}).get("nodes", {}).items()}
        # an attribution or discover job: the scored edges (or nodes), and
        # discover's exact checks and faithfulness curve
        self.attribution = Attribution(self.raw["attribution"]) if "attribution" in self.raw \
            else None
        self.discover = self.raw.get("discover")
        self.variants = None
        if "sweep" in self.raw:
            self.variants = [Variant(self, v) for v in self.raw["sweep"]]
            self.metric = self.metric_per_example = self.rules = self._outputs = None
            self.positions = self.hidden_states = self.logits = self.token_logprobs = None
        else:
            self._load(self.raw)

    def circuit_svg(self, filename=None):
        """An attribution, discover or circuit job's circuit as SVG text (the
        server draws it); also written to filename if given."""
        return self._picture("circuit.svg", filename)

    def _picture(self, name, filename):
        """GET /v1/jobs/ID/name (an SVG) as text; also written to filename."""
        _, svg = self.client._request("GET", "/v1/jobs/%s/%s" % (self.id, name), raw=True)
        text = svg.decode()
        if filename:
            with open(filename, "w") as f:
                f.write(text)
        return Svg(text)

    def plot_faithfulness(self, ax=None):
        """A discover job's faithfulness curve with matplotlib (n across,
        faithfulness up, 1 the clean run); returns the Axes. A point whose
        faithfulness is null (the clean and corrupted runs give the same
        metric) is a gap; ValueError when every point is."""
        if not self.discover:
            raise ValueError("not a discover job (see \"discover\" in docs/jobs.md)")
        curve = self.discover["curve"]
        ys = [float("nan") if p["faithfulness"] is None else p["faithfulness"] for p in curve]
        if all(y != y for y in ys):
            raise ValueError("no faithfulness to plot: the clean and corrupted runs give the "
                             "same metric (%r), so nothing is normalised"
                             % self.discover.get("clean"))
        ax = ax or _pyplot("res.plot_faithfulness()", "res.circuit_svg() draws the curve").gca()
        ax.plot([p["n"] for p in curve], ys, "o-")
        ax.axhline(1, color="grey", linestyle="--", linewidth=0.8)
        ax.axhline(0, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("symlog" if any(p["n"] == 0 for p in curve) else "log")
        ax.set_xlabel("edges (top n by %s)" % self.attribution.method)
        ax.set_ylabel("faithfulness")
        return ax

    def grid(self):
        """A grid job's cells: (values, axes), values a numpy array (nested
        lists without numpy) of shape grid["shape"], normalized when the
        metric asked, and axes a list of (name, ticks), e.g.
        [("layer", [0, ..., 11]), ("head", [0, ..., 11])]."""
        g = self.raw.get("grid")
        if g is None:
            raise ValueError("not a grid job (see \"grid\" in docs/jobs.md)")
        vals = g["values"]
        if _np is not None:
            vals = _np.array(vals, dtype=float)  # a null (equal baselines) becomes nan
        return vals, [(a, g["ticks"][a]) for a in g["axes"]]

    def heatmap(self, filename=None):
        """A grid job's heatmap as SVG text (the server draws it); also
        written to filename if given."""
        return self._picture("heatmap.svg", filename)

    def plot(self, ax=None):
        """A grid job's values with matplotlib (imshow on a diverging map,
        axes labelled and ticked); returns the Axes."""
        plt = _pyplot("res.plot()", "res.heatmap() draws the same grid as SVG")
        vals, axes = self.grid()
        vals = _np.atleast_2d(vals)
        if len(axes) > 2:
            raise ValueError("a grid of %d axes: plot a slice of res.grid()" % len(axes))
        ax = ax or plt.gca()
        vmax = float(_np.nanmax(_np.abs(vals))) or 1.0
        im = ax.imshow(vals, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xlabel(axes[-1][0])
        ax.set_xticks(range(len(axes[-1][1])), axes[-1][1])
        if len(axes) == 2:
            ax.set_ylabel(axes[0][0])
            ax.set_yticks(range(len(axes[0][1])), axes[0][1])
        ax.figure.colorbar(im, ax=ax)
        return ax

    def _repr_html_(self):
        """The metric, the top tokens of example 0 and the stats, as a table."""
        import html
        rows = []
        if self.metric is not None:
            rows.append(("metric", "%.6g" % self.metric))
        if self.variants is not None:
            rows.append(("variants", ", ".join("%s: %.4g" % (k, v) for k, v in
                                               list(self.metrics().items())[:16]
                                               if v is not None)))
        elif self._outputs and self._outputs.get("top_k"):
            rows.append(("top tokens (example 0, last position)",
                         ", ".join("%r %.3f" % (t, lp) for t, lp in self.top_k())))
        rows.append(("values computed", str(self.stats.get("values_computed"))))
        body = "".join("<tr><th style='text-align:left'>%s</th><td>%s</td></tr>"
                       % (html.escape(k), html.escape(v)) for k, v in rows)
        return "<table><caption>npp job %s</caption>%s</table>" % (html.escape(self.id), body)

    def metrics(self):
        """A sweep's metric means by variant name (or index when unnamed)."""
        return {v.name if v.name is not None else v.index: v.metric for v in self.variants or []}

    def visualise_path(self, filename=None, variant=None):
        """The path tree as SVG text (a sweep's: variant's, default 0); also
        written to filename if given."""
        q = "" if variant is None else "?variant=%d" % variant
        return self._picture("graph.svg" + q, filename)

    def __repr__(self):
        return "Result(job=%s, metric=%r, stats=%s)" % (self.id, self.metric, self.stats)
