/* graph.h - the names of GPT-2's computation graph (DESIGN.md section 2)
 * as a dense alphabet of symbols, for a model of L layers and H heads run
 * on T token positions:
 *
 *   ln_final  emb  a{i}  f{i}  a{i}.head  a{i}.head{h}  a{i}.head{h}.q|k|v
 *   a{i}.head.pos{p}  f{i}.head  f{i}.head.pos{p}
 *
 * Symbols are small integers so that path globs can be compiled into
 * bitmaps over them and paths walked as automata. */
#ifndef NPP_GRAPH_H
#define NPP_GRAPH_H

#include <stddef.h>

typedef enum {
    G_LN_FINAL,
    G_EMB,
    G_A,     /* a{i}: residual after block i's attention */
    G_F,     /* f{i}: residual after block i's MLP */
    G_AHEAD, /* a{i}.head */
    G_HEAD,  /* a{i}.head{h} */
    G_Q,     /* a{i}.head{h}.q */
    G_K,
    G_V,
    G_APOS,  /* a{i}.head.pos{p} */
    G_FHEAD, /* f{i}.head */
    G_FPOS,  /* f{i}.head.pos{p} */
} gkind;

typedef struct {
    int L, H, T;
    int nsym; /* number of symbols */
} graph_dims;

typedef struct {
    gkind kind;
    int layer; /* -1 for ln_final and emb */
    int idx;   /* head or position; -1 if none */
} gnode;

void graph_dims_init(graph_dims *g, int L, int H, int T);
/* Symbol of a node; idx is the head or position where the kind has one. */
int graph_sym(const graph_dims *g, gkind kind, int layer, int idx);
gnode graph_node(const graph_dims *g, int sym);
/* Writes the node's name ("a3.head7.q") into buf. */
void graph_name(const graph_dims *g, int sym, char *buf, size_t n);
/* Symbol of a name, or -1 if no node of this model has that name. */
int graph_parse(const graph_dims *g, const char *name);
/* For a name that is no node: the closest node name (edit distance) into
 * buf; returns 1 if it is close enough to suggest ("did you mean ...?"). */
int graph_closest(const graph_dims *g, const char *name, char *buf, size_t n);

/* The residual stream in order: emb 0, the attention of layer i 2i+1, its
 * MLP 2i+2, ln_final 2L+1. A node inside a sublayer (a{i}.head, its heads,
 * q/k/v and positions; f{i}.head and its positions) has its sublayer's
 * index, so "u is upstream of v" is index(u) < index(v). The planner walks
 * residual nodes by the same numbers. */
int graph_stream_index(const graph_dims *g, gkind kind, int layer);
/* The residual node of index j in 0..2L: emb, a{i} or f{i}. */
int graph_resid_sym(const graph_dims *g, int j);

#endif
