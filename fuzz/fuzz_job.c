/* fuzz_job.c - a job document through job_parse and run_prepare (parse,
 * compile the rules, plan, estimate) on a tiny model, with small limits so
 * that each input runs quickly. NPP_FUZZ_MODEL names the model folder. */
#include <jansson.h>

#include "common.h"
#include "run/run.h"

static model *M;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    npp_err e = {0};
    if (model_load(fuzz_env("NPP_FUZZ_MODEL"), NULL, &M, &e)) {
        fprintf(stderr, "fuzz: %s\n", e.message);
        exit(2);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (!doc)
        return 0;
    run_opts o = {.max_values = 2000, .max_plan_bytes = 32u << 20, .plan_seconds = 2};
    run_output *r = NULL;
    npp_err e = {0};
    if (!run_prepare(M, doc, &o, &r, &e)) {
        if (!r->est.peak_bytes || !r->est.result_bytes || r->plan.nv < 1)
            abort(); /* a planned job has an estimate */
        run_output_free(r);
    } else if (!e.code || !e.message[0]) {
        abort(); /* a refusal always says why */
    }
    json_decref(doc);
    return 0;
}
