/* test_glob.c - path globs: name matching (classes, negation, ranges,
 * escapes, ?, *), brace expansion (nested, escaped, stray braces and
 * commas, the caps), and whole-path matching (** matching zero or more
 * names, anchoring). */
#include <string.h>

#include "check.h"
#include "patch/glob.h"

static graph_dims G;

/* Compiles pat and walks the '/'-separated path; 1 match, 0 no, -1 error. */
static int path_match(const char *pat, const char *path)
{
    glob_ctx *c = glob_ctx_new(&G);
    glob *gl;
    char err[512], buf[512];
    if (glob_compile(pat, c, &gl, err, sizeof err)) {
        glob_ctx_free(c);
        return -1;
    }
    int any = 0;
    for (int a = 0; a < glob_nalts(gl); a++) {
        uint64_t s = glob_start(gl, a);
        snprintf(buf, sizeof buf, "%s", path);
        for (char *save = NULL, *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save))
            s = glob_step(gl, a, s, graph_parse(&G, t));
        any |= glob_accepts(gl, a, s);
    }
    glob_free(gl);
    glob_ctx_free(c);
    return any;
}

static int nalts(const char *pat, char *err, size_t n)
{
    glob_ctx *c = glob_ctx_new(&G);
    glob *gl;
    int r = glob_compile(pat, c, &gl, err, n) ? -1 : glob_nalts(gl);
    if (r >= 0)
        glob_free(gl);
    glob_ctx_free(c);
    return r;
}

int main(void)
{
    graph_dims_init(&G, 12, 12, 16);
    /* names */
    CHECK(glob_name_match("a1*", "a1.head3"), "*");
    CHECK(!glob_name_match("a1", "a1.head3"), "anchored");
    CHECK(glob_name_match("a?.head", "a7.head") && !glob_name_match("a?.head", "a10.head"), "?");
    CHECK(glob_name_match("a[0-3].head", "a2.head") && !glob_name_match("a[0-3].head", "a4.head"),
          "range");
    CHECK(glob_name_match("a[!0-3].head", "a5.head") && !glob_name_match("a[!0-3].head", "a1.head"),
          "negation !");
    CHECK(glob_name_match("a[^13]", "a2") && !glob_name_match("a[^13]", "a3"), "negation ^");
    CHECK(glob_name_match("a[]x]", "a]") && glob_name_match("a[]x]", "ax"), "] first in a class");
    CHECK(glob_name_match("a\\*", "a*") && !glob_name_match("a\\*", "ab"), "escaped *");
    CHECK(glob_name_match("[a-\\", "[a-\\"), "an unclosed class ending in a backslash: literal");
    CHECK(!glob_name_match("[a-\\", "a"), "an unclosed class is a literal '['");
    CHECK(glob_name_match("a[\\]]", "a]"), "escaped ] in a class");
    CHECK(glob_name_match("*.head*.q", "a3.head11.q") &&
              !glob_name_match("*.head*.q", "a3.head11.k"),
          "two stars");
    /* paths */
    CHECK(path_match("**/a1", "ln_final/f11/a1") == 1, "**/a1");
    CHECK(path_match("**/a1", "ln_final/a1/a0") == 0, "anchored at the end");
    CHECK(path_match("ln_final/**/emb", "ln_final/emb") == 1, "** matches zero names");
    CHECK(path_match("ln_final/**/**/emb", "ln_final/emb") == 1, "two ** match zero names");
    CHECK(path_match("**/a1/**", "ln_final/a1") == 1, "a trailing ** matches zero names");
    CHECK(path_match("**/a1/**", "ln_final/f3/a1/a1.head/a1.head2/emb") == 1, "**/a1/**");
    CHECK(path_match("ln_final/a1/**", "ln_final/f2/a1/emb") == 0, "anchored at the start");
    CHECK(path_match("**/a{1,2}.head{3,4}/**", "ln_final/a2/a2.head/a2.head4/emb") == 1, "braces");
    CHECK(path_match("**/{a,f}{0,1}", "ln_final/f1") == 1 &&
              path_match("**/{a,f}{0,1}", "ln_final/f2") == 0,
          "two groups");
    CHECK(path_match("**/{a{1,2},f{3,4}}", "ln_final/f4") == 1, "nested braces");
    CHECK(path_match("**/{a1/a1.head,f1/f1.head}/**", "ln_final/f1/f1.head/emb") == 1,
          "braces spanning '/'");
    /* brace expansion */
    char err[512];
    CHECK(nalts("**/{a,f}{0,1,2}", err, sizeof err) == 6, "2 x 3 alternatives");
    CHECK(nalts("**/{a{0,1},f{0,1,2}}", err, sizeof err) == 5, "nested: 2 + 3");
    CHECK(nalts("**/{a0}{}", err, sizeof err) == 1, "one-option groups are spliced");
    CHECK(nalts("**/a\\{0", err, sizeof err) == -1 && strstr(err, "matches no node"),
          "an escaped brace is a literal: %s", err);
    CHECK(nalts("**/{a0,f0", err, sizeof err) == -1 && strstr(err, "unbalanced"), "%s", err);
    CHECK(nalts("**/a0}", err, sizeof err) == -1 && strstr(err, "matches no node"),
          "a stray } is a literal: %s", err);
    CHECK(nalts("**/{a,f}{0,1}{0,1}{0,1}{0,1}{0,1}{0,1}{0,1}{0,1}{0,1}{0,1}", err, sizeof err) ==
                  -1 &&
              strstr(err, "more than 1024 alternatives"),
          "cap: %s", err);
    char deep[200] = "**/";
    for (int i = 0; i < 40; i++)
        strcat(deep, "{");
    strcat(deep, "a0");
    for (int i = 0; i < 40; i++)
        strcat(deep, "}");
    CHECK(nalts(deep, err, sizeof err) == -1 && strstr(err, "nested more than"), "%s", err);
    CHECK(nalts("**/a12", err, sizeof err) == -1 && strstr(err, "12 layers"), "dims in: %s", err);
    CHECK(nalts("**//a1", err, sizeof err) == -1 && strstr(err, "empty name"), "%s", err);
    return check_done("glob");
}
