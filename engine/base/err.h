/* err.h - the engine's error report: a code, the field or file it concerns,
 * and a message a person can act on. The server turns it into an HTTP
 * status and a JSON body; the CLI prints it. Every engine function that can
 * fail returns 0 or one of these negative codes and fills a caller-owned
 * npp_err (which may be NULL when the caller does not care why). */
#ifndef NPP_ERR_H
#define NPP_ERR_H

#include <stdarg.h>

#include "shim.h"

enum {
    NPP_OK = 0,
    NPP_EINVAL = -1,    /* the request or arguments are wrong */
    NPP_EIO = -2,       /* a file could not be read or written */
    NPP_EFORMAT = -3,   /* a file's content is malformed */
    NPP_ENOMEM = -4,    /* out of memory */
    NPP_ETORCH = -5,    /* the tensor library failed */
    NPP_ELIMIT = -6,    /* a configured limit was exceeded */
    NPP_ENODEV = -7,    /* the device is not available */
    NPP_ECANCELED = -8, /* the job was cancelled */
};

typedef struct {
    int code;          /* 0 or NPP_E* */
    char field[128];   /* the JSON field, file or tensor concerned ("" if none) */
    char message[768]; /* what went wrong, complete in itself */
} npp_err;

/* Sets *e (if e is not NULL and no error is recorded yet) and returns
 * code, so callers can write `return npp_fail(e, NPP_EINVAL, "x", ...)`. */
int npp_fail(npp_err *e, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int npp_vfail(npp_err *e, int code, const char *field, const char *fmt, va_list ap);
/* The engine's code for a shim code (out of memory, no device, bad
 * argument, else a libtorch failure): the one place they are mapped. */
int npp_shim_code(int shim_code);
/* Records a failed shim call: its mapped code and its message. */
int npp_fail_shim(npp_err *e, const shim_status *st);

/* Short name of a code: "invalid", "io", "format", ... (static storage). */
const char *npp_err_name(int code);

#endif
