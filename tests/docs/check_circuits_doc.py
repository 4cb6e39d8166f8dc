#!/usr/bin/python3
"""Runs every job of docs/circuits.md (each a ```json block after a
`<!-- job: NAME -->` line) on models/induction and checks what the page says
about it; the page's figure must be what the eap-ig job draws today (the
same edges, each score within 1e-3 relative: another machine may round the
last bits differently).

    check_circuits_doc.py --npp BUILD/npp [--write]

--write redraws the figure (docs/img/circuit-eap-ig.svg) instead of
checking it."""
import argparse
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from doclib import ROOT, check, page_jobs, run, summary  # noqa: E402

DOC = os.path.join(ROOT, "docs/circuits.md")
FIGURE = "docs/img/circuit-eap-ig.svg"
KEY = ["a0.head0", "a1.head1.k"]


def drawn(path):
    """{edge title: score} of a circuit picture."""
    out = {}
    for e in ET.parse(path).getroot().iter():
        if e.get("class") == "edge":
            title = e.find("{http://www.w3.org/2000/svg}title").text.split(":")[0]
            out[title] = float(e.get("data-score"))
    return out


def faith(res, n):
    return next(p["faithfulness"] for p in res["discover"]["curve"] if p["n"] == n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    jobs = page_jobs(DOC)
    check("the page has its three jobs", sorted(jobs) == ["circuit", "eap", "eap-ig"],
          str(sorted(jobs)))
    tmp = tempfile.mkdtemp(prefix="npp-doc-")
    fig = os.path.join(ROOT, FIGURE) if a.write else os.path.join(tmp, "eap-ig.svg")
    eap = run(a.npp, json.loads(jobs["eap"]))
    ig = run(a.npp, json.loads(jobs["eap-ig"]), "--circuit", fig)
    circ = run(a.npp, json.loads(jobs["circuit"]))
    if not a.write:
        now, page = drawn(fig), drawn(os.path.join(ROOT, FIGURE))
        check("eap-ig: the page's figure is what the job draws", now.keys() == page.keys() and
              all(abs(now[k] - page[k]) <= 1e-3 * abs(page[k]) + 1e-6 for k in now), FIGURE)
    d = eap["discover"]
    check("clean 16.70, corrupted 4.97",
          abs(d["clean"] - 16.70) < 0.01 and abs(d["corrupt"] - 4.97) < 0.01,
          "%.2f, %.2f" % (d["clean"], d["corrupt"]))
    edges = eap["attribution"]["edges"]
    rank = [e[:2] for e in edges].index(KEY)
    check("eap: the key edge is ninth with a score of 0.0004",
          rank == 8 and abs(edges[rank][2]) < 0.001, "rank %d, %.4f" % (rank + 1, edges[rank][2]))
    exact = next(v["exact"] for v in d["verify"] if v["edge"] == KEY)
    check("eap: verify gives its exact effect, -11.89", abs(exact + 11.89) < 0.01, "%.3f" % exact)
    most = min(d["verify"], key=lambda v: v["exact"])
    second = sorted(v["exact"] for v in d["verify"])[1]
    check("eap: only emb -> a1.head1.v moves it more (-14.95)",
          most["edge"] == ["emb", "a1.head1.v"] and abs(most["exact"] + 14.95) < 0.01 and
          second > most["exact"] and abs(second + 11.89) < 0.01,
          "%s %.3f, next %.3f" % (most["edge"], most["exact"], second))
    check("eap: the top 1 to 8 edges keep none of it (0.00 to -0.02), 16 keep all",
          all(-0.02 <= faith(eap, n) <= 0.001 for n in (1, 2, 4, 8)) and
          abs(faith(eap, 16) - 1) < 0.001,
          str([round(faith(eap, n), 4) for n in (1, 2, 4, 8, 16)]))
    edges = ig["attribution"]["edges"]
    rank = [e[:2] for e in edges].index(KEY)
    check("eap-ig: the key edge is second (-7.72; exact -11.89)",
          rank == 1 and abs(edges[rank][2] + 7.72) < 0.01, "%.3f" % edges[rank][2])
    check("eap-ig: the top 8 edges keep 0.999", abs(faith(ig, 8) - 0.999) < 0.001,
          "%.4f" % faith(ig, 8))
    top8 = {tuple(e[:2]) for e in edges[:8]}
    want = {("emb", "a0.head0.v"), tuple(KEY), ("emb", "a1.head1.v"), ("a1.head1", "ln_final"),
            ("a1.head1", "f1.head"), ("f1.head", "ln_final")}
    check("eap-ig: the mechanism the page lists is in the top 8", want <= top8)
    m = circ["metric"]
    top = circ["outputs"]["top_k"][0][0]["tokens"][0]["token"]
    check("circuit: six edges keep 0.93 (15.86), the top token is ' hard'",
          abs(m["normalized"] - 0.93) < 0.005 and abs(m["mean"] - 15.86) < 0.01 and
          top == " hard", "%.4f, %.2f, %r" % (m["normalized"], m["mean"], top))
    sys.exit(summary())


if __name__ == "__main__":
    main()
