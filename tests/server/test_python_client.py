"""The Python client (clients/python) against a live nppd."""
import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../clients/python"))
import npp  # noqa: E402
from npp.rules import anything, contains, last, path  # noqa: E402

from conftest import MODEL, NPP, SLOW_MODEL, slow_job  # noqa: E402

SPAIN = ["The capital of Spain is", "The capital of Italy is"]


def test_patterns_compile_to_rules():
    assert npp.rules.rules([(contains("a1"), 1)], "input") == [{"match": "**/a1/**", "input": 1}]
    assert npp.rules.rules([(last("a1"), True)], "split") == [{"match": "**/a1", "split": True}]
    r = npp.rules.rules([(contains("a1") & ~last("emb") | path("ln_final/**"), 1)], "input")
    assert r == [{"any": [{"all": ["**/a1/**", {"match": "**/emb", "not": True}]}, "ln_final/**"],
                  "input": 1}]
    assert (~(contains("a1") | contains("f0"))).to_json() == {
        "any": ["**/a1/**", "**/f0/**"], "not": True}


def test_original_example(fresh_server):
    client = npp.connect("http://127.0.0.1:%d" % fresh_server.port, token=fresh_server.token)
    assert [m["name"] for m in client.models()] == ["tiny"]
    m = client.model("tiny")
    assert m.tokenize("Hello world") == [15496, 995]
    res = m.run(SPAIN, which=[(contains("a1"), 1)], branch=[(last("a1"), True)],
                outputs={"hidden_states": True, "top_k": 3},
                metric={"type": "logit_diff", "target": " Madrid", "baseline": " Rome"})
    assert res.rules == {"branch": [{"match": "**/a1", "split": True}],
                         "which": [{"match": "**/a1/**", "input": 1}]}
    assert isinstance(res.hidden_states, np.ndarray) and res.hidden_states.shape == (1, 5, 64)
    top = res.top_k()
    assert len(top) == 3 and all(isinstance(t, str) and lp <= 0 for t, lp in top)
    assert isinstance(res.metric, float) and res.stats["values_computed"] > 0
    # the same job through the CLI gives the same numbers
    doc = m.job_document(SPAIN, which=[(contains("a1"), 1)], branch=[(last("a1"), True)],
                         outputs={"top_k": 3},
                         metric={"type": "logit_diff", "target": " Madrid", "baseline": " Rome"})
    del doc["model"]
    path_ = os.path.join(fresh_server.tmp.name, "j.json")
    json.dump(doc, open(path_, "w"))
    cli = json.loads(subprocess.run([NPP, "run", "--model", MODEL, path_], capture_output=True,
                                    text=True, check=True).stdout)
    assert abs(cli["metric"]["mean"] - res.metric) < 1e-6
    svg_path = os.path.join(fresh_server.tmp.name, "paths.svg")
    svg = res.visualise_path(svg_path)
    assert os.path.getsize(svg_path) > 1000 and ET.fromstring(svg).tag.endswith("svg")


def test_uneven_prompts_and_activations(server):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    batch = ["The capital of Spain is", "Madrid is the capital of"]
    lens = [len(m.tokenize(t)) for t in batch]
    assert lens[0] != lens[1]
    res = m.run([batch], activations=["a1", "a0.pattern"], outputs={"top_k": 1})
    assert res.lengths == lens and res.positions == [[n - 1] for n in lens]
    a1, pat = res.activations["a1"], res.activations["a0.pattern"]
    assert a1.shape == (2, max(lens), 64) and pat.shape == (2, 4, max(lens), max(lens))
    short = lens.index(min(lens))
    assert not a1[short, min(lens):].any() and a1[short, :min(lens)].any()
    alone = m.run([batch[short]], activations={"nodes": ["a1"], "input": 0}, outputs={"top_k": 1})
    assert np.allclose(alone.activations["a1"][0], a1[short, :min(lens)], atol=1e-5)
    with pytest.raises(TypeError):
        m.run([batch], activations="a1")
    with pytest.raises(npp.NppError) as e:
        m.run([batch], activations=["a1.hed0"])
    assert e.value.status == 422 and e.value.field == "outputs.activations.nodes[0]"
    assert 'did you mean "a1.head0"' in e.value.message


def test_ablate_and_steer_presets(server):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    plain = m.run(SPAIN, outputs={"hidden_states": True, "top_k": 0})
    abl = m.run(SPAIN, preset=npp.ablate("a1.head2", "mean", of=1, positions=[4]),
                outputs={"hidden_states": True, "top_k": 0})
    assert abl.rules["intervene"] == [{"match": "**/a1.head/a1.head2", "ablate": "mean",
                                       "of": 1, "positions": [4]}]
    assert not np.allclose(abl.hidden_states, plain.hidden_states)
    # only the last position changes: the earlier ones are the plain run's
    assert np.allclose(abl.hidden_states[:, :4], plain.hidden_states[:, :4], atol=1e-5)
    v = np.linspace(-1, 1, 64).astype(np.float32)
    a = m.run(SPAIN, preset=npp.steer("f0", v, scale=2), outputs={"hidden_states": True, "top_k": 0})
    b = m.run(SPAIN, preset=npp.steer("f0", v.tolist(), scale=2),
              outputs={"hidden_states": True, "top_k": 0})
    assert np.allclose(a.hidden_states, b.hidden_states, atol=1e-6)
    assert not np.allclose(a.hidden_states, plain.hidden_states)
    with pytest.raises(npp.NppError) as e:
        m.run(SPAIN, preset=npp.steer("f0", [1.0, 2.0]))
    assert e.value.status == 422 and e.value.field == "preset.vector"


def test_grid(server):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    metric = {"type": "logit_diff", "target": " Madrid", "baseline": " Rome", "normalize": True}
    res = m.grid(SPAIN, npp.activation_patch("a{layer}.head{head}"), metric,
                 layer="all", head="all")
    vals, axes = res.grid()
    assert vals.shape == (2, 4) and axes == [("layer", [0, 1]), ("head", [0, 1, 2, 3])]
    one = m.run(SPAIN, preset=npp.activation_patch("a1.head3"), metric=metric)
    assert abs(one.raw["metric"]["normalized"] - vals[1, 3]) < 1e-6
    svg = res.heatmap()
    assert svg.count('class="cell"') == 8
    with pytest.raises(ValueError):
        one.grid()
    import matplotlib  # Debian python3-matplotlib, which scripts/install-deps.sh installs
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axis = plt.subplots()
    assert res.plot(axis) is axis
    img = axis.get_images()[0]
    assert np.allclose(np.asarray(img.get_array()), vals)  # the cells are the grid's values
    lo, hi = img.get_clim()
    assert hi == -lo and hi == pytest.approx(np.nanmax(np.abs(vals)))  # centred at 0
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("head", "layer")
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0", "1", "2", "3"]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["0", "1"]
    assert len(fig.axes) == 2  # the colour bar
    plt.close(fig)


def test_circuit(server):
    """A circuit from edge pairs (or scored triples): no edge is input 1's
    plain run, every edge input 0's; one edge left out is path patching."""
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    metric = {"type": "logit_diff", "target": " Madrid", "baseline": " Rome", "normalize": True}
    L, H = 2, 4  # the test model
    senders = ["emb"] + ["a%d.head%d" % (i, h) for i in range(L) for h in range(H)] + \
        ["f%d.head" % i for i in range(L)]

    def index(n):  # position in the residual stream
        return 0 if n == "emb" else 2 * L + 1 if n == "ln_final" else \
            2 * int(n[1:].split(".")[0]) + (1 if n[0] == "a" else 2)
    receivers = ["a%d.head%d.%s" % (i, h, c) for i in range(L) for h in range(H) for c in "qkv"] + \
        ["f%d.head" % i for i in range(L)] + ["ln_final"]
    edges = [(u, v, 0.5) for v in receivers for u in senders if index(u) < index(v)]
    assert len(edges) == 110
    full = m.run(SPAIN, circuit=edges, metric=metric)
    assert abs(full.raw["metric"]["normalized"] - 1) < 1e-5
    none = m.run(SPAIN, circuit={"edges": []}, metric=metric)
    assert abs(none.raw["metric"]["normalized"]) < 1e-5
    minus = m.run(SPAIN, circuit=[e for e in edges if e[:2] != ("a1.head3", "ln_final")],
                  metric=metric)
    pp = m.run(SPAIN, preset=npp.path_patch("a1.head3", "ln_final"), metric=metric)
    assert np.allclose(minus.hidden_states, pp.hidden_states, atol=1e-5)
    sw = m.sweep(SPAIN, [("none", {"circuit": []}), ("all", {"circuit": edges})], metric=metric)
    assert sw.metrics() == pytest.approx({"none": none.metric, "all": full.metric}, abs=1e-5)
    with pytest.raises(TypeError):
        m.run(SPAIN, circuit="a1.head3")
    with pytest.raises(npp.NppError) as e:
        m.run(SPAIN, circuit=[("a1.head3", "a0.head0.q")])
    assert e.value.status == 422 and e.value.field == "circuit.edges[0]"


def test_attribution_and_discover(server, monkeypatch):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    metric = {"type": "logit_diff", "target": " Madrid", "baseline": " Rome"}
    sent, request = [], m.client._request

    def spy(method, path, body=None, **kw):
        sent.append((method, (kw.get("headers") or {}).get("X-Npp-Affinity")))
        return request(method, path, body, **kw)
    monkeypatch.setattr(m.client, "_request", spy)
    res = m.attribute(SPAIN, metric, top=5)
    att = res.attribution
    assert att.method == "eap" and att.count == 110 and len(att) == 5
    assert att.scores.shape == (5,) and (np.diff(np.abs(att.scores)) <= 0).all()
    assert all(len(e) == 3 for e in att) and att.top(2) == [e[:2] for e in att.edges[:2]]
    with pytest.raises(ValueError, match="keeps the top 5 of 110"):
        att.top(6)  # not silently a smaller circuit
    # the same affinity key as run()'s for these inputs: the replica with their values
    posts = [key for method, key in sent if method == "POST"]
    m.run(SPAIN, metric=metric)
    posts2 = [key for method, key in sent if method == "POST"]
    assert posts[0] and posts2[-1] == posts[0], sent
    full = m.attribute(SPAIN, metric).attribution  # every edge: a circuit of all of them
    circ = m.run(SPAIN, circuit=full.top(110), metric=dict(metric, normalize=True))
    assert len(full) == 110 and abs(circ.raw["metric"]["normalized"] - 1) < 1e-5
    d = m.discover(SPAIN, metric, steps=2, top_n=[5, 110], verify=3)
    assert [p["n"] for p in d.discover["curve"]] == [5, 110] and len(d.discover["verify"]) == 3
    assert abs(d.discover["curve"][1]["faithfulness"] - 1) < 1e-5
    svg = d.circuit_svg()
    assert svg._repr_svg_().startswith("<?xml") and 'class="edge"' in svg
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    assert d.plot_faithfulness(ax) is ax
    xs, ys = ax.get_lines()[0].get_data()
    assert list(xs) == [5, 110] and abs(ys[1] - 1) < 1e-5
    plt.close(fig)
    with pytest.raises(ValueError):
        res.plot_faithfulness()
    nodes = m.attribute(SPAIN, metric, method="eap-ig", steps=2, level="nodes")
    assert nodes.attribution.level == "nodes" and len(nodes.attribution.nodes) == 11
    with pytest.raises(ValueError, match="node-level"):
        nodes.attribution.top(3)  # not an empty circuit
    same = m.discover([SPAIN[0], SPAIN[0]], metric, method="eap", top_n=[2, 4])
    assert [p["faithfulness"] for p in same.discover["curve"]] == [None, None]
    with pytest.raises(ValueError, match="same metric"):
        same.plot_faithfulness()
    assert all(key for method, key in sent if method == "POST"), sent  # discover's too


def test_client_conveniences(server, tmp_path, monkeypatch):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    assert m.to_str_tokens("Hello world") == ["Hello", " world"]
    res = m.run(SPAIN, outputs={"top_k": 2, "token_logprobs": [" Madrid", " Rome"],
                                "attention": [1]}, metric={"type": "logit", "token": " Madrid"})
    assert res.hidden_states.shape == (1, 5, 64)  # without asking, as the original library
    toks, lp = res.token_logprobs
    assert toks == [" Madrid", " Rome"] and lp.shape == (1, 1, 2) and (lp < 0).all()
    assert abs(lp[0, 0, 0] - res.raw["outputs"]["token_logprobs"]["values"][0][0][0]) < 1e-12
    att = res.attention[(1, 1)]
    assert att.shape == (1, 4, 5, 5) and np.allclose(att.sum(-1), 1, atol=1e-5)
    html = res._repr_html_()
    assert html.startswith("<table>") and "values computed" in html
    svg = res.visualise_path()
    assert isinstance(svg, str) and svg._repr_svg_().startswith("<?xml")
    assert m.run(SPAIN, outputs={"hidden_states": False}).hidden_states is None
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if not installed
    with pytest.raises(ImportError, match="python3-matplotlib"):
        res.plot()
    # the package installs offline, as docs/python.md says
    src = tmp_path / "src"  # a copy: setuptools builds in the source folder
    shutil.copytree(os.path.join(os.path.dirname(__file__), "../../clients/python"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                    "--no-index", "--target", str(tmp_path / "site"), str(src)], check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-c", "import npp, sys; print(npp.__file__)"],
                         env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")),
                         capture_output=True, text=True, check=True, cwd=str(tmp_path)).stdout
    assert out.startswith(str(tmp_path / "site"))


def test_presets_and_errors(server):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    res = m.run(SPAIN, preset=npp.activation_patch("a1.head2"), outputs={"top_k": 1})
    assert res.rules["which"][0]["input"] == 1
    res = m.run(SPAIN, preset=npp.path_patch("a0.head1", ["ln_final", "a1.head2.k"]))
    assert res.stats["values_planned"] > 0
    with pytest.raises(npp.NppError) as e:
        m.run(SPAIN, which=[(contains("a99"), 1)])
    assert e.value.status == 422 and e.value.field == "which[0].match"
    assert "'a99' matches no node" in e.value.message
    # a rule that decides no path would quietly give the clean run: refused,
    # unless it says it may decide nothing
    with pytest.raises(npp.NppError) as e:
        m.run(SPAIN, which=[("a1", 1)])
    assert e.value.status == 422 and e.value.field == "which[0].match"
    assert "decides nothing" in e.value.message and "**/" in e.value.message
    doc = m.job_document(SPAIN, which=[("a1", 1), (contains("a0"), 1)])
    doc["which"][0]["optional"] = True
    body = m.client._request("POST", "/v1/jobs?wait=60", doc)[1]
    assert body["state"] == "done" and body["result"]["rules"]["which"][0]["optional"] is True
    # the metric echoes the tokens it used; a word without GPT-2's leading
    # space, when the spaced form is one token too, runs with a warning
    res = m.run(SPAIN, metric={"type": "logit", "token": "hard"})
    assert res.raw["metric"]["tokens"] == {"token": {"id": 10424, "text": "hard"}}
    assert [w["field"] for w in res.raw["warnings"]] == ["metric.token"]
    assert '" hard"' in res.raw["warnings"][0]["message"] and "1327" in res.raw["warnings"][0]["message"]
    res = m.run([["a b", "c d"]], metric={"type": "logit_diff", "target": [" hard", " soft"],
                                          "baseline": " Rome"})
    assert "warnings" not in res.raw
    assert res.raw["metric"]["tokens"] == {
        "target": [{"id": 1327, "text": " hard"}, {"id": 2705, "text": " soft"}],
        "baseline": {"id": 10598, "text": " Rome"}}
    # a bare string is one input, not a list of characters
    with pytest.raises(TypeError, match="not a bare string"):
        m.run("The capital of Spain is")
    with pytest.raises(npp.NppError) as e:
        npp.connect("http://127.0.0.1:%d" % server.port, token="wrong").models()
    assert e.value.status == 403 and e.value.code == "forbidden"
    with pytest.raises(npp.NppError) as e:
        npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model("gpt9")
    assert e.value.code == "unknown_model"


def test_sweep(server):
    m = npp.connect("http://127.0.0.1:%d" % server.port, token=server.token).model()
    metric = {"type": "logit_diff", "target": " Madrid", "baseline": " Rome"}
    variants = [("a0.head%d" % h, npp.path_patch("a0.head%d" % h, "a1.head2.q")) for h in range(4)]
    variants += [{"name": "rules", "which": [(contains("a1"), 1)], "branch": [(last("a1"), True)]},
                 npp.activation_patch("a1.head2")]
    sw = m.sweep(SPAIN, variants, metric=metric, outputs={"top_k": 2})
    assert [v.name for v in sw.variants] == ["a0.head0", "a0.head1", "a0.head2", "a0.head3",
                                             "rules", None]
    assert list(sw.metrics()) == ["a0.head0", "a0.head1", "a0.head2", "a0.head3", "rules", 5]
    assert sw.variants[4].rules == {"branch": [{"match": "**/a1", "split": True}],
                                    "which": [{"match": "**/a1/**", "input": 1}]}
    # the same numbers as each job alone, to float32 rounding (a sweep batches
    # its variants' values, so its matrix products have other shapes)
    for v, preset in [(sw.variants[1], variants[1][1]), (sw.variants[5], variants[5])]:
        alone = m.run(SPAIN, preset=preset, metric=metric, outputs={"top_k": 2})
        assert v.metric == pytest.approx(alone.metric, rel=1e-5, abs=1e-5)
        assert [t for t, _ in v.top_k()] == [t for t, _ in alone.top_k()]
        assert [lp for _, lp in v.top_k()] == pytest.approx([lp for _, lp in alone.top_k()],
                                                            rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="per variant"):
        sw.top_k()
    svg = sw.variants[2].visualise_path()
    alone = m.run(SPAIN, preset=variants[2][1], metric=metric, outputs={"top_k": 2})
    assert svg == alone.visualise_path() != sw.variants[1].visualise_path()
    ET.fromstring(svg)
    with pytest.raises(npp.NppError) as e:
        m.sweep(SPAIN, [npp.path_patch("a1.head0", "a0.head1.q")])
    assert e.value.status == 422 and e.value.field == "sweep[0].preset.senders"


def test_submit_progress_cancel(make_server, capsys):
    srv = make_server(models={"slow": SLOW_MODEL})
    m = npp.connect("http://127.0.0.1:%d" % srv.port, token=srv.token).model()
    job = m.submit(slow_job(90)["inputs"], preset=slow_job(90)["preset"],
                   outputs={"top_k": 1, "baselines": True})
    assert job.status()["state"] in ("queued", "running")
    res = job.wait(progress=True)
    err = capsys.readouterr().err
    assert ("npp [" in err and "values" in err) or "it/s" in err or "value/s" in err, err
    assert res.stats["values_computed"] > 0 and len(res.baselines) == 6
    # alice's next job waits for her running ones (two users, two workers:
    # one each) and says so, once, after it has waited a second
    ahead = [m.submit([x for k in range(5) for x in slow_job(92 + 5 * n + k)["inputs"]],
                      preset=slow_job(92)["preset"], outputs={"top_k": 1, "baselines": True})
             for n in range(3)]
    second = m.submit(slow_job(89)["inputs"], preset=slow_job(89)["preset"])
    assert second.wait(progress=True).stats["values_computed"] > 0
    err = capsys.readouterr().err
    said = "npp: job %s queued, waiting for one of your running jobs to end" % second.id
    assert err.count(said) == 1, err
    assert [j.status()["state"] for j in ahead] == ["done"] * 3
    job2 = m.submit(slow_job(91)["inputs"], preset=slow_job(91)["preset"],
                    outputs={"top_k": 1, "baselines": True})
    job2.cancel()
    with pytest.raises(npp.NppError) as e:
        job2.wait(progress=False)
    assert e.value.code == "cancelled"
