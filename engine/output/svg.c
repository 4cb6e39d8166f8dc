/* svg.c - see svg.h. */
#include "output/svg.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef NPP_NO_GRAPHVIZ
/* Built with -DNPP_WITH_GRAPHVIZ=OFF (e.g. on a GPU machine without
 * Graphviz): everything but the picture works. */
int svg_render(const plan *p, const job *j, char **out, size_t *len, npp_err *e)
{
    (void)p;
    (void)j;
    *out = NULL;
    *len = 0;
    return npp_fail(e, NPP_EINVAL, "", "this build has no Graphviz: no SVG path graphs");
}
#else
#include <graphviz/gvc.h>
#include <graphviz/gvplugin.h>

static pthread_mutex_t gv_lock = PTHREAD_MUTEX_INITIALIZER;

/* Only the dot layout and the core renderers (svg), linked in: no plugin
 * is loaded from Graphviz's configuration. In particular not the pango text
 * plugin, whose font cache keeps a pointer into the previous graph's freed
 * strings (a use-after-free on every render after the first in Graphviz
 * 2.42); without it, label widths are estimated, which boxes of short
 * names do not mind. */
extern gvplugin_library_t gvplugin_dot_layout_LTX_library;
extern gvplugin_library_t gvplugin_core_LTX_library;
static lt_symlist_t builtins[] = {
    {"gvplugin_dot_layout_LTX_library", (void *)&gvplugin_dot_layout_LTX_library},
    {"gvplugin_core_LTX_library", (void *)&gvplugin_core_LTX_library},
    {0, 0}};

/* Colours for inputs 0, 1, 2, ... (colour-blind-safe palette). */
static const char *const PALETTE[] = {"#a6cee3", "#fdbf6f", "#b2df8a", "#fb9a99",
                                      "#cab2d6", "#ffff99", "#8dd3c7", "#fccde5"};
#define NPAL (sizeof PALETTE / sizeof PALETTE[0])

static int only_input(uint32_t reads)
{
    if (!reads || (reads & (reads - 1)))
        return -1;
    int k = 0;
    while (!(reads >> k & 1))
        k++;
    return k;
}

static void set(void *obj, const char *k, const char *v)
{
    agsafeset(obj, (char *)k, (char *)v, "");
}

static void legend(Agraph_t *g, const job *j)
{
    Agraph_t *sub = agsubg(g, "cluster_legend", 1);
    set(sub, "label", "inputs");
    set(sub, "fontname", "Helvetica");
    for (int k = 0; k < j->n_inputs; k++) {
        char name[32], label[32];
        snprintf(name, sizeof name, "legend%d", k);
        snprintf(label, sizeof label, "input %d", k);
        Agnode_t *n = agnode(sub, name, 1);
        set(n, "label", label);
        set(n, "fillcolor", PALETTE[(size_t)k % NPAL]);
    }
    Agnode_t *n = agnode(sub, "legend_mixed", 1);
    set(n, "label", "several");
    set(n, "fillcolor", "#dddddd");
}

/* The path of node i from the root, through the first parent of each node
 * (nodes are stored after their children, so parents have larger
 * indices); "one of its paths: ..." where the sub-tree is shared. */
static void path_of(const plan *p, const int32_t *parent, const uint8_t *shared, int32_t i,
                    char *buf, size_t n)
{
    int32_t chain[512];
    int depth = 0;
    for (int32_t k = i; k >= 0 && depth < 512; k = parent[k])
        chain[depth++] = k;
    size_t w = (size_t)snprintf(buf, n, "%s", shared[i] ? "one of its paths: " : "");
    for (int d = depth - 1; d >= 0 && w < n; d--) {
        char name[64];
        graph_name(&p->g, p->nodes[chain[d]].sym, name, sizeof name);
        w += (size_t)snprintf(buf + w, n - w, "%s%s", d == depth - 1 ? "" : "/", name);
    }
}

int svg_render(const plan *p, const job *j, char **out, size_t *len, npp_err *e)
{
    *out = NULL;
    *len = 0;
    if (p->root_node < 0)
        return npp_fail(e, NPP_EINVAL, "", "no path tree: the job was not planned");
    pthread_mutex_lock(&gv_lock);
    GVC_t *gvc = gvContextPlugins(builtins, 0);
    Agraph_t *g = agopen("paths", Agdirected, NULL);
    int rc = 0;
    set(g, "rankdir", "TB");
    set(g, "nodesep", "0.15");
    set(g, "ranksep", "0.3");
    set(g, "fontname", "Helvetica");
    agattr(g, AGNODE, "shape", "box");
    agattr(g, AGNODE, "style", "filled,rounded");
    agattr(g, AGNODE, "fontname", "Helvetica");
    agattr(g, AGNODE, "fontsize", "10");
    agattr(g, AGNODE, "height", "0.25");
    agattr(g, AGEDGE, "arrowsize", "0.5");
    Agnode_t **gn = calloc((size_t)p->nn, sizeof *gn);
    int32_t *parent = malloc((size_t)p->nn * sizeof *parent);
    uint8_t *shared = calloc((size_t)p->nn, 1), *npar = calloc((size_t)p->nn, 1);
    char *tip = malloc(4096);
    if (!gvc || !g || !gn || !parent || !shared || !npar || !tip) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory rendering the graph");
        goto done;
    }
    for (int32_t i = 0; i < p->nn; i++)
        parent[i] = -1;
    for (int32_t i = p->root_node; i >= 0; i--) /* parents before their kids */
        for (int c = 0; c < p->nodes[i].nkids; c++) {
            int32_t k = p->nodes[i].kids[c];
            if (parent[k] < 0)
                parent[k] = i;
            npar[k] += npar[k] < 2;
        }
    for (int32_t i = p->root_node; i >= 0; i--)
        shared[i] = npar[i] > 1 || (parent[i] >= 0 && shared[parent[i]]);
    for (int32_t i = 0; i < p->nn; i++) {
        const plan_node *n = &p->nodes[i];
        char id[24], label[96], name[64];
        graph_name(&p->g, n->sym, name, sizeof name);
        gnode d = graph_node(&p->g, n->sym);
        if (d.kind == G_EMB)
            snprintf(label, sizeof label, "emb\ninput %d", n->decision);
        else if (n->decision == SPLIT_HEADS)
            snprintf(label, sizeof label, "%s\nheads", name);
        else if (n->decision == SPLIT_POSITIONS)
            snprintf(label, sizeof label, "%s\npositions", name);
        else
            snprintf(label, sizeof label, "%s", name);
        if (n->edit >= 0 && p->edits) { /* the intervention on its value */
            const edit *ed = &p->edits->e[n->edit];
            size_t w = strlen(label);
            if (ed->kind == EDIT_ZERO)
                snprintf(label + w, sizeof label - w, "\nzero-ablated");
            else if (ed->kind == EDIT_MEAN)
                snprintf(label + w, sizeof label - w, "\nmean of input %d", ed->input);
            else if (ed->kind == EDIT_PATCH)
                snprintf(label + w, sizeof label - w, "\nfrom input %d", ed->input);
            else
                snprintf(label + w, sizeof label - w, "\nsteered x%g", (double)ed->scale);
        }
        snprintf(id, sizeof id, "n%d", i);
        gn[i] = agnode(g, id, 1);
        set(gn[i], "label", label);
        path_of(p, parent, shared, i, tip, 4096);
        set(gn[i], "tooltip", tip);
        int k = only_input(n->reads);
        set(gn[i], "fillcolor", k < 0 ? "#dddddd" : PALETTE[(size_t)k % NPAL]);
        if (n->decision != SPLIT_NO && d.kind != G_EMB)
            set(gn[i], "penwidth", "2");
        if (n->edit >= 0)
            set(gn[i], "style", "filled,rounded,dashed");
        for (int c = 0; c < n->nkids; c++)
            agedge(g, gn[i], gn[n->kids[c]], NULL, 1);
    }
    legend(g, j);
    char *buf = NULL;
    unsigned int blen = 0;
    if (gvLayout(gvc, g, "dot") || gvRenderData(gvc, g, "svg", &buf, &blen)) {
        rc = npp_fail(e, NPP_EINVAL, "", "Graphviz could not lay out the path graph");
        goto done;
    }
    *out = malloc((size_t)blen + 1);
    if (*out) {
        memcpy(*out, buf, blen);
        (*out)[blen] = 0;
        *len = blen;
    } else {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory rendering the graph");
    }
    gvFreeRenderData(buf);
    gvFreeLayout(gvc, g);
done:
    free(gn);
    free(parent);
    free(shared);
    free(npar);
    free(tip);
    if (g)
        agclose(g);
    if (gvc)
        gvFreeContext(gvc);
    pthread_mutex_unlock(&gv_lock);
    return rc;
}

#endif

int svg_write_file(const plan *p, const job *j, const char *path, npp_err *e)
{
    char *s;
    size_t n;
    int rc = svg_render(p, j, &s, &n, e);
    if (rc || !s)
        return rc ? rc : NPP_ENOMEM;
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(s, 1, n, fp) != n) {
        rc = npp_fail(e, NPP_EIO, path, "%s: cannot write: %s", path, strerror(errno));
    }
    if (fp && fclose(fp) && !rc)
        rc = npp_fail(e, NPP_EIO, path, "%s: cannot write", path);
    free(s);
    return rc;
}
