/* test_rules.c - rule lists: the first matching rule decides, defaults
 * when none does, any/all/not, and errors that name the field. */
#include <string.h>

#include "check.h"
#include "patch/rules.h"

static graph_dims G;

static ruleset *parse(const char *branch, const char *which, npp_err *e)
{
    json_t *b = branch ? json_loads(branch, 0, NULL) : NULL,
           *w = which ? json_loads(which, 0, NULL) : NULL;
    glob_ctx *c = glob_ctx_new(&G);
    ruleset *r = NULL;
    memset(e, 0, sizeof *e);
    if (rules_parse(b, w, NULL, c, 3, NULL, &r, e))
        r = NULL;
    glob_ctx_free(c);
    json_decref(b);
    json_decref(w);
    return r;
}

/* The state after walking path (names separated by '/'). */
static uint64_t *walk(const ruleset *r, const char *path)
{
    static uint64_t st[4096];
    char buf[256];
    rules_start(r, st);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *save = NULL, *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save))
        rules_step(r, st, graph_parse(&G, t), st);
    return st;
}

int main(void)
{
    graph_dims_init(&G, 4, 4, 8);
    npp_err e;
    int idx;
    ruleset *r = parse(
        "[{\"match\": \"**/a1\", \"split\": true}, {\"match\": \"**\", \"split\": \"heads\"}]",
        "[{\"match\": \"**/a1/**\", \"input\": 1}, {\"match\": \"**/a1/**\", \"input\": 2}]", &e);
    CHECK(r != NULL, "%s", e.message);
    CHECK(rules_branch(r, walk(r, "ln_final/f3/a1"), &idx) == SPLIT_YES && idx == 0, "first rule");
    CHECK(rules_branch(r, walk(r, "ln_final/f3"), &idx) == SPLIT_HEADS && idx == 1, "second rule");
    CHECK(rules_which(r, walk(r, "ln_final/a1/emb"), &idx) == 1 && idx == 0,
          "first match wins over a later one");
    CHECK(rules_which(r, walk(r, "ln_final/a2/emb"), &idx) == 0 && idx == -1, "default input 0");
    rules_free(r);

    r = parse(NULL,
              "[{\"any\": [\"**/a1/**\", {\"match\": \"**/f2/**\"}], \"not\": true, \"input\": 1},"
              " {\"all\": [\"**/a1/**\", \"**/f2/**\"], \"input\": 2}]",
              &e);
    CHECK(r != NULL, "%s", e.message);
    CHECK(rules_which(r, walk(r, "ln_final/a3/emb"), NULL) == 1, "not any: neither");
    CHECK(rules_which(r, walk(r, "ln_final/f2/a1/emb"), NULL) == 2, "all: both");
    CHECK(rules_which(r, walk(r, "ln_final/f2/emb"), NULL) == 0, "one of them: default");
    rules_free(r);

    CHECK(!parse("[{\"match\": \"**/a1\", \"input\": 1}]", NULL, &e) &&
              !strcmp(e.field, "branch[0]") && strstr(e.message, "belongs in a which rule"),
          "%s: %s", e.field, e.message);
    CHECK(!parse(NULL, "[{\"match\": \"**\", \"input\": 3}]", &e) &&
              !strcmp(e.field, "which[0].input"),
          "%s: %s", e.field, e.message);
    CHECK(!parse(NULL, "[{\"any\": [\"**\", {\"match\": \"**/a9\"}], \"input\": 1}]", &e) &&
              !strcmp(e.field, "which[0].any[1].match") && strstr(e.message, "matches no node"),
          "%s: %s", e.field, e.message);
    CHECK(!parse("[{\"match\": \"**\", \"any\": [\"**\"], \"split\": true}]", NULL, &e) &&
              strstr(e.message, "exactly one of"),
          "%s", e.message);
    CHECK(!parse("[{\"match\": \"**\", \"split\": \"rows\"}]", NULL, &e) &&
              !strcmp(e.field, "branch[0].split"),
          "%s: %s", e.field, e.message);
    /* what plan_check_rules names: the field, and whether it may decide nothing */
    r = parse("[{\"match\": \"**/a1\", \"split\": true}]",
              "[{\"any\": [\"**/a1/**\"], \"input\": 1}, "
              "{\"match\": \"a1\", \"input\": 2, \"optional\": true}]",
              &e);
    CHECK(r != NULL, "%s", e.message);
    CHECK(rules_count(r, 1) == 1 && rules_count(r, 0) == 2, "counts");
    CHECK(!strcmp(rules_field(r, 1, 0), "branch[0].match") &&
              !strcmp(rules_field(r, 0, 0), "which[0]") &&
              !strcmp(rules_field(r, 0, 1), "which[1].match"),
          "fields %s %s %s", rules_field(r, 1, 0), rules_field(r, 0, 0), rules_field(r, 0, 1));
    CHECK(!rules_optional(r, 1, 0) && !rules_optional(r, 0, 0) && rules_optional(r, 0, 1),
          "optional");
    rules_free(r);
    CHECK(!parse(NULL, "[{\"match\": \"**\", \"input\": 1, \"optional\": 1}]", &e) &&
              !strcmp(e.field, "which[0].optional"),
          "%s: %s", e.field, e.message);
    return check_done("rules");
}
