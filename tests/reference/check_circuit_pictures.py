#!/usr/bin/python3
"""What `npp run --circuit` draws (the same code draws GET circuit.svg),
against the result it draws from:

1. discover: `top_n` is taken in increasing order, each size once; the
   picture is the smallest n whose faithfulness is >= 0.9 (else the
   largest), every edge of it from the result's list (which keeps at least
   the largest n, whatever `top` says);
2. a null faithfulness (clean and corrupted runs alike) is no point, "n/a";
3. node-level attribution: the top senders filled by score, no edges;
4. a circuit job: each edge once, unscored (no data-score); a score of 0
   is grey, not "raises" (plain EAP with kl, whose warning says why);
5. a rules job whose which rule is not a circuit's has no picture: npp
   still prints the result, and exits 1 naming "circuit".

    check_circuit_pictures.py --npp BUILD/npp --model DIR
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

NS = "{http://www.w3.org/2000/svg}"
CLEAN = [[11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25, 26, 27, 28]]
CORRUPT = [[11, 12, 13, 94, 15, 16, 17, 18], [21, 22, 23, 24, 95, 26, 27, 28]]
BASE = {"inputs": [CLEAN, CORRUPT], "outputs": {"top_k": 0},
        "metric": {"type": "logit_diff", "target": 5, "baseline": 6}}


def drawn(job, tmp):
    """npp run --circuit: (exit status, result or None, stderr, svg root or None)."""
    jf, svg = os.path.join(tmp, "job.json"), os.path.join(tmp, "c.svg")
    if os.path.exists(svg):
        os.unlink(svg)
    with open(jf, "w") as f:
        json.dump(job, f)
    p = subprocess.run([harness.NPP, "run", "--model", harness.MODEL, "--compact", "--circuit",
                        svg, jf], capture_output=True, text=True)
    res = json.loads(p.stdout) if p.stdout.strip() else None
    root = ET.parse(svg).getroot() if os.path.exists(svg) else None
    return p.returncode, res, p.stderr, root


def edges_of(root):
    """The drawn edges: (sender, receiver) -> data-score (None: unscored), stroke."""
    out = {}
    for e in root.iter(NS + "path"):
        if e.get("class") == "edge":
            u, v = e.find(NS + "title").text.split(":")[0].split(" -> ")
            s = e.get("data-score")
            out[(u, v)] = (None if s is None else float(s), e.get("stroke"))
    return out


def title(root):
    return next(root.iter(NS + "text")).text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    harness.setup(a.npp, a.model)
    tmp = tempfile.mkdtemp()

    # 1. discover, top_n out of order and repeated
    rc, res, err, root = drawn(dict(BASE, discover={"method": "eap-ig", "steps": 2,
                                                    "top_n": [110, 16, 4, 8, 2, 4], "verify": 0}), tmp)
    curve = res["discover"]["curve"]
    check("discover: top_n in increasing order, each once", rc == 0 and
          [p["n"] for p in curve] == [2, 4, 8, 16, 110], str([p["n"] for p in curve]) + err)
    pick = next((p for p in curve if p["faithfulness"] is not None and p["faithfulness"] >= 0.9),
                curve[-1])
    listed = {tuple(e[:2]): e[2] for e in res["attribution"]["edges"][:pick["edges"]]}
    got = edges_of(root)
    check("discover: the picture is the smallest n with faithfulness >= 0.9",
          pick["n"] < 110 and title(root).startswith("the top %d edges" % pick["edges"]) and got and
          all(k in listed and abs(s - listed[k]) <= 1e-5 * abs(listed[k]) for k, (s, _) in
              got.items()), "%s; %d drawn" % (title(root), len(got)))
    check("discover: the result lists the largest circuit's edges (top 110 > 100)",
          len(res["attribution"]["edges"]) == 110, str(len(res["attribution"]["edges"])))
    xs = [float(c.get("cx")) for c in root.iter(NS + "circle") if c.get("class") == "point"]
    check("discover: the curve's points left to right", len(xs) == 5 and xs == sorted(xs), str(xs))
    rc, res, err, root = drawn(dict(BASE, discover={"method": "eap", "top_n": [1, 4], "top": 3}),
                               tmp)
    n4 = {tuple(e[:2]) for e in res["attribution"]["edges"][:4]}
    check("discover: top below the largest n lists that n's edges, and the picture draws them",
          len(res["attribution"]["edges"]) == 4 and
          (res["discover"]["curve"][-1]["faithfulness"] or 0) < 0.9 and
          title(root).startswith("the top 4 edges") and set(edges_of(root)) <= n4,
          "%d listed; %s" % (len(res["attribution"]["edges"]), title(root)))

    # 2. the same prompt twice: the faithfulness is null
    rc, res, err, root = drawn(dict(BASE, inputs=[CLEAN, CLEAN],
                                    discover={"method": "eap", "top_n": [2, 4]}), tmp)
    points = [c for c in root.iter(NS + "circle") if c.get("class") == "point"]
    labels = [t.text for t in root.iter(NS + "text")]
    check("discover: a null faithfulness is no point, marked n/a",
          rc == 0 and [p["faithfulness"] for p in res["discover"]["curve"]] == [None, None] and
          not points and "2 n/a" in labels and "n/a" in title(root), title(root))

    # 3. node level
    rc, res, err, root = drawn(dict(BASE, attribution={"method": "eap", "level": "nodes"}), tmp)
    nodes = {g.find(NS + "text").text: float(g.get("data-score")) for g in root.iter(NS + "g")
             if g.get("data-score") is not None}
    want = {u: s for u, s in res["attribution"]["nodes"][:30]}
    check("nodes: the senders filled by score, no edges",
          rc == 0 and not edges_of(root) and nodes.keys() == want.keys() and
          all(abs(nodes[u] - want[u]) <= 1e-5 * abs(want[u]) + 1e-12 for u in want),
          "%d nodes" % len(nodes))

    # 4. a circuit listing an edge twice; scores of 0
    es = [["a0.head1", "a1.head2.k"], ["a1.head2", "ln_final"], ["a1.head2", "ln_final"]]
    rc, res, err, root = drawn(dict(BASE, circuit={"edges": es}), tmp)
    got = edges_of(root)
    check("circuit: each edge once, unscored",
          rc == 0 and title(root).startswith("the circuit (2 edges)") and len(got) == 2 and
          all(s is None for s, _ in got.values()), title(root))
    rc, res, err, root = drawn(dict(BASE, metric={"type": "kl"},
                                    attribution={"method": "eap"}), tmp)
    got = edges_of(root)
    check("kl, plain eap: every score 0, drawn grey, and a warning says why",
          rc == 0 and all(e[2] == 0 for e in res["attribution"]["edges"]) and
          got and all(s == 0 and c == "#999999" for s, c in got.values()) and
          [w["field"] for w in res.get("warnings", [])] == ["attribution.method"] and
          "eap-ig" in err, str(list(got.values())[:2]) + err)

    # 5. edges read from input 1 (not a circuit): no picture, the result kept
    split = [{"match": "**/{a0,f0,a1,f1}", "split": True},
             {"match": "**/a*.head", "split": "heads"},
             {"match": "**/a*.head/a*.head*", "split": True}]
    rc, res, err, root = drawn(dict(BASE, branch=split,
                                    which=[{"edges": [["emb", "ln_final"]], "input": 1}]), tmp)
    check("rules, not a circuit: no picture, the result printed, exit 1",
          rc == 1 and root is None and res and "metric" in res and "'circuit'" in err, err)
    sys.exit(harness.summary())


if __name__ == "__main__":
    main()
