/* fuzz_glob.c - path globs: compiling any pattern (brace expansion,
 * classes, escapes) and walking the automaton over a few paths, and
 * fnmatch-style matching of the raw bytes against node names. Input: the
 * pattern (everything up to the first newline; the rest is a name). */
#include <string.h>

#include "common.h"
#include "patch/glob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    char *name = strchr(buf, '\n');
    if (name)
        *name++ = 0;
    graph_dims g;
    graph_dims_init(&g, 3, 4, 16);
    glob_ctx *c = glob_ctx_new(&g);
    glob *gl = NULL;
    char err[512];
    if (c && !glob_compile(buf, c, &gl, err, sizeof err)) {
        /* ln_final/a2/a2.head/a2.head3/a2.head3.q/f1/.../emb */
        int path[] = {graph_sym(&g, G_LN_FINAL, -1, -1), graph_sym(&g, G_A, 2, -1),
                      graph_sym(&g, G_AHEAD, 2, -1),     graph_sym(&g, G_HEAD, 2, 3),
                      graph_sym(&g, G_Q, 2, 3),          graph_sym(&g, G_F, 1, -1),
                      graph_sym(&g, G_FHEAD, 1, -1),     graph_sym(&g, G_FPOS, 1, 15),
                      graph_sym(&g, G_A, 0, -1),         graph_sym(&g, G_EMB, -1, -1)};
        for (int a = 0; a < glob_nalts(gl); a++) {
            uint64_t s = glob_start(gl, a);
            for (size_t i = 0; i < sizeof path / sizeof path[0]; i++) {
                s = glob_step(gl, a, s, path[i]);
                (void)glob_accepts(gl, a, s);
            }
        }
        glob_free(gl);
    }
    glob_ctx_free(c);
    char nm[64];
    for (int s = 0; s < g.nsym; s += 7) {
        graph_name(&g, s, nm, sizeof nm);
        (void)glob_name_match(buf, nm);
        (void)graph_parse(&g, nm);
    }
    if (name) {
        (void)glob_name_match(buf, name);
        (void)graph_parse(&g, name);
    }
    free(buf);
    return 0;
}
