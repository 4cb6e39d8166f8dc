/* edges.c - edges and edge sets; see edges.h. */
#include "patch/edges.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int edges_sender(const graph_dims *g, int sym)
{
    gnode d = graph_node(g, sym);
    switch (d.kind) {
    case G_EMB: return 0;
    case G_HEAD: return 1 + d.layer * g->H + d.idx;
    case G_FHEAD: return 1 + g->L * g->H + d.layer;
    default: return -1;
    }
}

int edges_receiver(const graph_dims *g, int sym)
{
    gnode d = graph_node(g, sym);
    switch (d.kind) {
    case G_LN_FINAL: return 0;
    case G_Q:
    case G_K:
    case G_V: return 1 + 3 * (d.layer * g->H + d.idx) + (int)(d.kind - G_Q);
    case G_FHEAD: return 1 + 3 * g->L * g->H + d.layer;
    default: return -1;
    }
}

int edges_sender_sym(const graph_dims *g, int s)
{
    if (s == 0)
        return graph_sym(g, G_EMB, -1, -1);
    if (s <= g->L * g->H)
        return graph_sym(g, G_HEAD, (s - 1) / g->H, (s - 1) % g->H);
    return graph_sym(g, G_FHEAD, s - 1 - g->L * g->H, -1);
}

int edges_receiver_sym(const graph_dims *g, int r)
{
    if (r == 0)
        return graph_sym(g, G_LN_FINAL, -1, -1);
    if (r <= 3 * g->L * g->H) {
        int k = r - 1, head = k / 3;
        return graph_sym(g, (gkind)(G_Q + k % 3), head / g->H, head % g->H);
    }
    return graph_sym(g, G_FHEAD, r - 1 - 3 * g->L * g->H, -1);
}

int edges_nsenders(const graph_dims *g)
{
    return 1 + g->L * (g->H + 1);
}

int edges_nreceivers(const graph_dims *g)
{
    return 1 + 3 * g->L * g->H + g->L;
}

int edges_upstream(const graph_dims *g, int u, int v)
{
    gnode a = graph_node(g, u), b = graph_node(g, v);
    return graph_stream_index(g, a.kind, a.layer) < graph_stream_index(g, b.kind, b.layer);
}

long edges_count(const graph_dims *g)
{
    long n = 0;
    for (int r = 0; r < edges_nreceivers(g); r++)
        for (int s = 0; s < edges_nsenders(g); s++)
            n += edges_upstream(g, edges_sender_sym(g, s), edges_receiver_sym(g, r));
    return n;
}

/* The symbol of edge[k]'s name, or -1 with e set. */
static int edge_name(const graph_dims *g, json_t *v, const char *f, const char *what, npp_err *e)
{
    char near[64], hint[96] = "";
    if (!json_is_string(v))
        return npp_fail(e, NPP_EINVAL, f, "%s: the %s must be a node name", f, what), -1;
    const char *name = json_string_value(v);
    int sym = graph_parse(g, name);
    if (sym < 0) {
        if (graph_closest(g, name, near, sizeof near))
            snprintf(hint, sizeof hint, "; did you mean \"%s\"?", near);
        return npp_fail(e, NPP_EINVAL, f,
                        "%s: no node \"%s\" in this model (%d layers, %d heads)%s", f, name, g->L,
                        g->H, hint),
               -1;
    }
    return sym;
}

int edges_parse(const graph_dims *g, json_t *list, const char *field, edge_set *out, npp_err *e)
{
    char f[96];
    memset(out, 0, sizeof *out);
    out->g = *g;
    out->ns = edges_nsenders(g);
    out->nr = edges_nreceivers(g);
    if (!json_is_array(list) || json_array_size(list) > EDGES_MAX)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: a list of at most %d edges [sender, receiver] (senders emb, "
                        "a{i}.head{h}, f{i}.head; receivers a{i}.head{h}.q|k|v, f{i}.head, "
                        "ln_final)",
                        field, EDGES_MAX);
    size_t words = ((size_t)out->ns * (size_t)out->nr + 63) / 64;
    if (!(out->bits = calloc(words, sizeof *out->bits)))
        return npp_fail(e, NPP_ENOMEM, field, "out of memory");
    for (size_t k = 0; k < json_array_size(list); k++) {
        json_t *ed = json_array_get(list, k);
        snprintf(f, sizeof f, "%s[%zu]", field, k);
        if (!json_is_array(ed) || json_array_size(ed) != 2) {
            edges_free(out);
            return npp_fail(e, NPP_EINVAL, f,
                            "%s: an edge is [sender, receiver], e.g. "
                            "[\"a0.head1\", \"a1.head2.k\"]",
                            f);
        }
        int u = edge_name(g, json_array_get(ed, 0), f, "sender", e);
        int v = u < 0 ? -1 : edge_name(g, json_array_get(ed, 1), f, "receiver", e);
        if (u < 0 || v < 0) {
            edges_free(out);
            return NPP_EINVAL;
        }
        int s = edges_sender(g, u), r = edges_receiver(g, v);
        const char *un = json_string_value(json_array_get(ed, 0)),
                   *vn = json_string_value(json_array_get(ed, 1));
        int rc = 0;
        if (s < 0)
            rc = npp_fail(e, NPP_EINVAL, f,
                          "%s: \"%s\" cannot send (senders: emb, a{i}.head{h}, f{i}.head)", f, un);
        else if (r < 0)
            rc = npp_fail(e, NPP_EINVAL, f,
                          "%s: \"%s\" cannot receive (receivers: a{i}.head{h}.q|k|v, f{i}.head, "
                          "ln_final)",
                          f, vn);
        else if (!edges_upstream(g, u, v))
            rc = npp_fail(e, NPP_EINVAL, f, "%s: \"%s\" is not upstream of \"%s\"", f, un, vn);
        if (rc) {
            edges_free(out);
            return rc;
        }
        size_t bit = (size_t)s * (size_t)out->nr + (size_t)r;
        if (!(out->bits[bit / 64] >> (bit % 64) & 1))
            out->n++;
        out->bits[bit / 64] |= 1ull << (bit % 64);
    }
    return 0;
}

void edges_free(edge_set *s)
{
    free(s->bits);
    s->bits = NULL;
}

int edges_has(const edge_set *s, int sender, int receiver)
{
    size_t bit = (size_t)sender * (size_t)s->nr + (size_t)receiver;
    return (int)(s->bits[bit / 64] >> (bit % 64) & 1);
}

uint64_t edges_start(const edge_set *s)
{
    return (uint64_t)graph_sym(&s->g, G_LN_FINAL, -1, -1) + 1;
}

/* Whether sender snd feeds the receiver of word w: the last receiver, or
 * all three of q, k, v when w is a head whose input is not split. */
static int feeds(const edge_set *s, int snd, uint64_t w)
{
    int last = (int)(w - 1);
    gnode d = graph_node(&s->g, last);
    if (d.kind != G_HEAD)
        return edges_has(s, snd, edges_receiver(&s->g, last));
    for (gkind c = G_Q; c <= G_V; c++)
        if (!edges_has(s, snd, edges_receiver(&s->g, graph_sym(&s->g, c, d.layer, d.idx))))
            return 0;
    return 1;
}

uint64_t edges_step(const edge_set *s, uint64_t w, int sym)
{
    if (w == EDGES_OUT)
        return EDGES_OUT;
    gkind k = graph_node(&s->g, sym).kind;
    if (k == G_LN_FINAL || k == G_Q || k == G_K || k == G_V)
        return (uint64_t)sym + 1;
    int snd = edges_sender(&s->g, sym);
    if (snd < 0)
        return w; /* a residual node, a{i}.head, a position */
    if (!feeds(s, snd, w))
        return EDGES_OUT;
    return k == G_EMB ? w : (uint64_t)sym + 1; /* a head's q/k/v or the MLP receive next */
}
