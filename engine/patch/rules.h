// rules.h - `branch`, `which` and `intervene` as data: ordered rule lists
// whose path globs are walked as automata (DESIGN.md section 3).
//
// JSON form of a rule (first match wins; defaults split false, input 0):
//   {"match": "**/a1", "split": true}
//   {"any": ["**/a1/**", {"match": "**/f0/**"}], "not": true, "input": 1}
//   {"all": [...], "split": "heads"}
// A matcher is a glob string, or an object with exactly one of "match",
// "any", "all", "edges", and optional "not". {"edges": [[u, v], ...]}
// matches the paths that use only those edges (patch/edges.h: meaningful
// under the full split, which "circuit" sets up). Split values: false, true, "heads",
// "positions"; which values: "input": index of an input. A rule that
// decides no path of a job is an error (plan_check_rules) unless it says
// "optional": true.
//
// The walk state is a vector of uint64 (one per glob alternative, see
// glob.h); rules_step advances it by one name. Everything a traversal
// decides below a node depends only on (node, state), which is what the
// planner memoises on.
#ifndef NPP_RULES_H
#define NPP_RULES_H

#include <jansson.h>
#include <stdint.h>

#include "base/err.h"
#include "patch/glob.h"

enum { SPLIT_NO = 0, SPLIT_YES = 1, SPLIT_HEADS = 2, SPLIT_POSITIONS = 3 };

typedef struct ruleset ruleset;

/* At most this many glob alternatives in one rule set (the words of a
 * walk state). */
#define RULES_MAX_ALTS 1024

enum { RULES_WHICH = 0, RULES_BRANCH = 1, RULES_INTERVENE = 2 };

/* How intervene rules are read: keys (NULL-ended) an intervene rule may
 * have besides its matcher; parse(ud, rule, field, e) returns the index of
 * the rule's edit (patch/edit.h), or -1 with e set. */
typedef struct {
    const char *const *keys;
    int (*parse)(void *ud, json_t *rule, const char *field, npp_err *e);
    void *ud;
} rules_edits;

/* Parses the three lists (any may be NULL = empty), compiling the globs in
 * gc (the job's context: see glob.h). n_inputs bounds "input"; ed reads
 * interventions (NULL: none are taken). Error fields look like
 * "branch[2].match". *out is new. */
int rules_parse(json_t *branch, json_t *which, json_t *intervene, glob_ctx *gc, int n_inputs,
                const rules_edits *ed, ruleset **out, npp_err *e);
void rules_free(ruleset *r);

/* Number of uint64 words in a walk state. */
int rules_state_words(const ruleset *r);
/* Initial state (before ln_final). */
void rules_start(const ruleset *r, uint64_t *state);
/* out = state after one more name (out may equal in). */
void rules_step(const ruleset *r, const uint64_t *in, int sym, uint64_t *out);
/* Decisions at the path walked so far: the first matching rule's value,
 * else the default. *rule_idx (if not NULL) gets the deciding rule or -1. */
int rules_branch(const ruleset *r, const uint64_t *state, int *rule_idx);
int rules_which(const ruleset *r, const uint64_t *state, int *rule_idx);
/* The edit (an index into the job's table) of the first intervene rule
 * matching the path walked so far, or -1. */
int rules_intervene(const ruleset *r, const uint64_t *state, int *rule_idx);

/* The rules of one list (kind: RULES_*): how many, whether rule idx said
 * "optional": true, and its field for errors ("which[0].match", or
 * "which[0]" for any/all). */
int rules_count(const ruleset *r, int kind);
int rules_optional(const ruleset *r, int kind, int idx);
const char *rules_field(const ruleset *r, int kind, int idx);

#endif
