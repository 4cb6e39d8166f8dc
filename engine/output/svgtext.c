/* svgtext.c - see svgtext.h. */
#include "output/svgtext.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void svg_put(svgbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->failed = 1;
            return;
        }
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + (size_t)k + 1)
            c *= 2;
        char *ns = realloc(b->s, c);
        if (!ns) {
            b->failed = 1;
            return;
        }
        b->s = ns, b->cap = c;
    }
}

void svg_text(svgbuf *b, const char *s)
{
    for (; s && *s; s++) {
        if ((unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBF &&
            ((unsigned char)s[2] == 0xBE || (unsigned char)s[2] == 0xBF)) {
            svg_put(b, "\xEF\xBF\xBD"); /* U+FFFE, U+FFFF: not XML characters either */
            s += 2;
            continue;
        }
        switch (*s) {
        case '<': svg_put(b, "&lt;"); break;
        case '>': svg_put(b, "&gt;"); break;
        case '&': svg_put(b, "&amp;"); break;
        case '"': svg_put(b, "&quot;"); break;
        case '\t':
        case '\n':
        case '\r': svg_put(b, "%c", *s); break;
        default: /* other control characters are not XML: U+FFFD instead */
            svg_put(b, (unsigned char)*s < 0x20 ? "\xEF\xBF\xBD" : "%c", *s);
        }
    }
}

void svg_colour(double v, double vmax, char *out, size_t n)
{
    double t = vmax > 0 ? v / vmax : 0;
    t = t > 1 ? 1 : t < -1 ? -1 : t;
    const int lo[3] = {0x21, 0x66, 0xac}, hi[3] = {0xb2, 0x18, 0x2b};
    const int *end = t < 0 ? lo : hi;
    double a = fabs(t);
    int c[3];
    for (int i = 0; i < 3; i++)
        c[i] = (int)lround(255 + (end[i] - 255) * a);
    snprintf(out, n, "#%02x%02x%02x", c[0], c[1], c[2]);
}
