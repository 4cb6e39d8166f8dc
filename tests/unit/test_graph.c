/* test_graph.c - graph names: every symbol's name parses back to it, names
 * of other models or malformed ones do not parse, and the residual stream's
 * order. */
#include <string.h>

#include "check.h"
#include "patch/graph.h"

int main(void)
{
    graph_dims g;
    graph_dims_init(&g, 3, 4, 5);
    char name[64];
    for (int s = 0; s < g.nsym; s++) {
        graph_name(&g, s, name, sizeof name);
        CHECK(graph_parse(&g, name) == s, "%s parses to %d, not %d", name, graph_parse(&g, name),
              s);
    }
    const char *bad[] = {"a3",  "f9",  "a0.head4",    "a0.head0.x",   "a0.head0.",   "a0.head0.qq",
                         "a01", "a-1", "f0.head0",    "a0.head.pos5", "f1.head.pos", "ln_finall",
                         "e",   "",    "a0.head0.q.", "a0head"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(graph_parse(&g, bad[i]) < 0, "'%s' parsed as %d", bad[i], graph_parse(&g, bad[i]));
    CHECK(graph_stream_index(&g, G_EMB, -1) == 0, "emb");
    CHECK(graph_stream_index(&g, G_Q, 1) == 3 && graph_stream_index(&g, G_A, 1) == 3, "a1's index");
    CHECK(graph_stream_index(&g, G_FPOS, 2) == 6 && graph_stream_index(&g, G_F, 2) == 6, "f2's");
    CHECK(graph_stream_index(&g, G_LN_FINAL, -1) == 7, "ln_final last");
    for (int j = 0; j <= 2 * g.L; j++) {
        gnode d = graph_node(&g, graph_resid_sym(&g, j));
        CHECK(graph_stream_index(&g, d.kind, d.layer) == j, "residual %d", j);
    }
    /* "did you mean": the closest name, when it is close */
    char near[48];
    CHECK(graph_closest(&g, "a1.heads2", near, sizeof near) && !strcmp(near, "a1.head2"), "%s",
          near);
    CHECK(graph_closest(&g, "ln_finl", near, sizeof near) && !strcmp(near, "ln_final"), "%s", near);
    CHECK(graph_closest(&g, "f2.head.pos", near, sizeof near) && !strncmp(near, "f2.head.pos", 11),
          "%s", near);
    CHECK(!graph_closest(&g, "mlp_out_of_layer_seven", near, sizeof near), "far: %s", near);
    return check_done("graph");
}
