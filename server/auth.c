/* auth.c - who a request is: its bearer token, checked in constant time
 * against the token file's digests (tokens.c parses the file), or without
 * a token file the client's address. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base/sha256.h"
#include "http_internal.h"

static void client_address(req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char addr[64] = "local";
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof addr);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof addr);
    }
    snprintf(r->user, sizeof r->user, "%s", addr);
}

/* 0 and r->user set if allowed; otherwise an error was sent (returns 1). */
int auth_request(req *r, enum MHD_Result *ret)
{
    if (!S.ntokens) {
        client_address(r);
        return 0;
    }
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
        *ret = send_error_h(r, 401, "unauthorized", "Authorization", "WWW-Authenticate",
                            "Bearer realm=\"nppd\"",
                            "this server needs a bearer token (Authorization: Bearer TOKEN)");
        return 1;
    }
    /* Compare digests, every token, no early exit: constant time. */
    unsigned char d[32];
    sha256(h + 7, strlen(h + 7), d);
    int found = -1;
    for (int i = 0; i < S.ntokens; i++) {
        unsigned diff = 0;
        for (int k = 0; k < 32; k++)
            diff |= (unsigned)(d[k] ^ S.tokens[i].hash[k]);
        int hit = diff == 0;
        found = hit && found < 0 ? i : found;
    }
    if (found < 0) {
        *ret = send_error(r, 403, "forbidden", "Authorization", "the bearer token is not valid");
        return 1;
    }
    snprintf(r->user, sizeof r->user, "%s", S.tokens[found].name);
    r->admin = S.tokens[found].admin;
    return 0;
}
