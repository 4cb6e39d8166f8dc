#!/usr/bin/python3
"""Runs every job of docs/experiments.md (each a ```json block after a
`<!-- job: NAME -->` line) on models/induction and checks what the page says
about it; the page's figures must be what the jobs draw today (each cell's
value within 1e-3: another machine may round the last bits differently).

    check_experiments_doc.py --npp BUILD/npp [--write]

--write redraws the figures (docs/img/exp-*.svg) instead of checking them."""
import argparse
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from doclib import ROOT, check, page_jobs, run, summary  # noqa: E402

DOC = os.path.join(ROOT, "docs/experiments.md")
FIGURES = {"head-grid": "docs/img/exp-head-grid.svg", "resid-grid": "docs/img/exp-resid-grid.svg"}


def cells(path):
    return {(c.get("data-row"), c.get("data-col")): float(c.get("data-value"))
            for c in ET.parse(path).getroot().iter() if c.get("class") == "cell"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    jobs = page_jobs(DOC)
    check("the page has its four jobs", sorted(jobs) ==
          ["head-grid", "mean-ablation", "resid-grid", "uneven"], str(sorted(jobs)))
    res = {}
    tmp = tempfile.mkdtemp(prefix="npp-doc-")
    for name, body in sorted(jobs.items()):
        fig = FIGURES.get(name)
        drawn = (os.path.join(ROOT, fig) if a.write else os.path.join(tmp, name + ".svg")) \
            if fig else None
        res[name] = run(a.npp, json.loads(body), *(("--heatmap", drawn) if drawn else ()))
        if fig and not a.write:
            now, page = cells(drawn), cells(os.path.join(ROOT, fig))
            check("%s: the page's figure is what the job draws" % name,
                  now.keys() == page.keys() and
                  all(abs(now[k] - page[k]) <= 1e-3 for k in now), fig)
    g = res["head-grid"]["grid"]["values"]
    best = max((v, l, h) for l, row in enumerate(g) for h, v in enumerate(row))
    check("head grid: a1.head1 restores the clean run (1.00), the largest cell",
          best[1:] == (1, 1) and abs(best[0] - 1) < 0.01, "%.3f at a%d.head%d" % best)
    check("head grid: a0.head0 scores 0.08, the pruned heads 0",
          abs(g[0][0] - 0.08) < 0.01 and all(abs(v) < 0.01 for l, row in enumerate(g)
                                              for h, v in enumerate(row) if (l, h) not in
                                              ((0, 0), (1, 1))), "%.3f" % g[0][0])
    r = res["resid-grid"]["grid"]["values"]
    check("resid grid: a0 at position 12 and a1 at the last position carry it (1.00)",
          abs(r[0][12] - 1) < 0.01 and abs(r[1][19] - 1) < 0.01 and
          all(abs(v) < 0.01 for v in r[1][:19]), "%.3f, %.3f" % (r[0][12], r[1][19]))
    m = res["mean-ablation"]
    top = [row[0]["tokens"][0]["token"] for row in m["outputs"]["top_k"]]
    base = m["baselines"][0]["metric"]["mean"]
    check("mean ablation: the logit falls from 16.9 to 8.5, every prompt predicts ' scope'",
          abs(base - 16.9) < 0.05 and abs(m["metric"]["mean"] - 8.5) < 0.05 and
          top == [" scope"] * 4, "%.2f -> %.2f, %s" % (base, m["metric"]["mean"], top))
    u = res["uneven"]
    top = [row[0]["tokens"][0]["token"] for row in u["outputs"]["top_k"]]
    check("uneven: lengths [12, 19, 19], positions per example, top-1 = the answers",
          u["lengths"] == [12, 19, 19] and u["outputs"]["positions"] == [[11], [18], [18]] and
          top == [" grounds", " snap", " thanked"], "%s %s" % (u["lengths"], top))
    sys.exit(summary())


if __name__ == "__main__":
    main()
