/* err.c - fills npp_err records; see err.h. */
#include "base/err.h"

#include <stdio.h>
#include <string.h>

int npp_vfail(npp_err *e, int code, const char *field, const char *fmt, va_list ap)
{
    if (!e || e->code)
        return code;
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    /* a message that starts with a path inside the field ("outputs.logits:
     * ..." for "outputs") names the field more exactly: use it */
    size_t fl = strlen(e->field), pl = strcspn(e->message, ": ");
    if (fl && pl > fl && pl < sizeof e->field && !strncmp(e->message, e->field, fl) &&
        (e->message[fl] == '.' || e->message[fl] == '[') && e->message[pl] == ':')
        snprintf(e->field, sizeof e->field, "%.*s", (int)pl, e->message);
    return code;
}

int npp_fail(npp_err *e, int code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    npp_vfail(e, code, field, fmt, ap);
    va_end(ap);
    return code;
}

const char *npp_err_name(int code)
{
    switch (code) {
    case NPP_OK: return "ok";
    case NPP_EINVAL: return "invalid";
    case NPP_EIO: return "io";
    case NPP_EFORMAT: return "format";
    case NPP_ENOMEM: return "nomem";
    case NPP_ETORCH: return "torch";
    case NPP_ELIMIT: return "limit";
    case NPP_ENODEV: return "nodev";
    case NPP_ECANCELED: return "cancelled";
    }
    return "unknown";
}

int npp_shim_code(int shim_code)
{
    switch (shim_code) {
    case SHIM_OK: return NPP_OK;
    case SHIM_ENOMEM: return NPP_ENOMEM;
    case SHIM_ENODEV: return NPP_ENODEV;
    case SHIM_EINVAL: return NPP_EINVAL;
    default: return NPP_ETORCH;
    }
}

int npp_fail_shim(npp_err *e, const shim_status *st)
{
    return npp_fail(e, npp_shim_code(st->code), "", "%s", st->msg);
}
