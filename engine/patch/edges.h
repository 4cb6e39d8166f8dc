/* edges.h - the model's edges (sender -> receiver) and sets of them, for
 * circuits (docs/jobs.md, "circuit").
 *
 * Senders: emb, a{i}.head{h} (head h's output z_h W_O[h]) and f{i}.head
 * (the MLP's output). Receivers: a{i}.head{h}.q|k|v (the residual input of
 * that head's query, key or value), f{i}.head (the MLP's input) and
 * ln_final. Edge [u, v] exists when u is upstream of v in the residual
 * stream: graph_stream_index(u) < graph_stream_index(v). GPT-2 small has
 * 32,491 edges.
 *
 * Edges as a path property: on a path of the full split (every a{i}, f{i}
 * split, every a{i}.head into heads, every head into q, k, v) the names
 * alternate between a receiver and the sender that feeds it: ln_final,
 * then a sender, then (for a head) its q/k/v or (for an MLP) the MLP itself
 * as the next receiver, and so on down to emb. edges_step walks that as an
 * automaton of one word: the last receiver, or EDGES_OUT once the path has
 * used an edge outside the set. (A head whose input is not split into q,
 * k, v receives on all three: the edge must be in the set for each.) */
#ifndef NPP_EDGES_H
#define NPP_EDGES_H

#include <jansson.h>
#include <stdint.h>

#include "base/err.h"
#include "patch/graph.h"

/* At most this many edges in one list (GPT-2 XL has about 2.6 million:
 * a list names a circuit, not the whole model). */
#define EDGES_MAX 200000

typedef struct {
    graph_dims g;
    int ns, nr;     /* senders, receivers */
    uint64_t *bits; /* ns x nr bits: sender s feeds receiver r */
    long n;         /* edges in the set */
} edge_set;

/* Sender index of sym (emb 0, a{i}.head{h} 1 + i*H + h, f{i}.head
 * 1 + L*H + i), or -1. */
int edges_sender(const graph_dims *g, int sym);
/* Receiver index of sym (ln_final 0, a{i}.head{h}.q|k|v 1 + 3(i*H + h) +
 * c, f{i}.head 1 + 3*L*H + i), or -1. */
int edges_receiver(const graph_dims *g, int sym);
/* The symbols of sender index s / receiver index r. */
int edges_sender_sym(const graph_dims *g, int s);
int edges_receiver_sym(const graph_dims *g, int r);
/* How many senders (1 + L(H + 1)) and receivers (1 + 3LH + L) the model has. */
int edges_nsenders(const graph_dims *g);
int edges_nreceivers(const graph_dims *g);
/* Whether sender u feeds receiver v (symbols). */
int edges_upstream(const graph_dims *g, int u_sym, int v_sym);
/* Number of edges of the model. */
long edges_count(const graph_dims *g);

/* Parses [[u, v], ...] (names); errors name the edge (field "circuit.edges"
 * gives "circuit.edges[3]") and say what is wrong: an unknown name (with the
 * closest valid one), a node that cannot send or receive, u not upstream of
 * v. Duplicates are fine. */
int edges_parse(const graph_dims *g, json_t *list, const char *field, edge_set *out, npp_err *e);
void edges_free(edge_set *s);
int edges_has(const edge_set *s, int sender, int receiver);

#define EDGES_OUT 0 /* the walk word once the path has left the set */
/* The walk word before ln_final. */
uint64_t edges_start(const edge_set *s);
/* The word after one more name: a receiver becomes the last receiver; a
 * sender checks its edge to the last receiver, then (a head, an MLP) is
 * what receives next. Other names (residual nodes, a{i}.head, positions)
 * leave it. */
uint64_t edges_step(const edge_set *s, uint64_t w, int sym);

#endif
