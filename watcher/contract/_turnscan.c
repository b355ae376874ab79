/*
 * watcher._turnscan: decode a batch of `watcher.turn/v1` JSON messages straight into columns.
 *
 * An optional accelerator for watcher.decode. One function, scan(values, max_bytes), sorts every
 * message into FAST (decoded here, its fields written to column buffers) or SLOW (left to the
 * per-message msgspec path, which also names the reject reason).
 *
 * The rule is soundness, not completeness: a message is fast only when
 * msgspec.json.Decoder(watcher.event_schema.Turn).decode(raw) certainly succeeds and yields exactly
 * the values returned here. Anything unusual (escapes in the fields read, duplicate keys, numbers of
 * more than 19 significant digits, odd timestamp spellings, ...) is slow. Numbers are converted
 * exactly (Clinger's case) or, with 16 to 19 digits, by Python's correctly rounding strtod.
 * Unknown keys (forward compatibility: msgspec ignores them) are fast: their values are skipped and
 * validated as msgspec validates a skipped value (skip_value), never more leniently.
 *
 * Memory safety: a bytes object always has a NUL after its last byte, and NUL is invalid in every
 * JSON context (a control byte inside a string, not whitespace, not a digit, not a literal's
 * letter). Every step of the parser tests the byte under the cursor before moving past it, so the
 * cursor stops at that NUL at the latest and never reads beyond it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Word-at-a-time tricks (first flagged byte by ctz, masked compares) assume little-endian words and
   GCC/Clang builtins; elsewhere the byte-by-byte paths run alone. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LE_WORDS 1
#else
#define LE_WORDS 0
#endif

/* ---- the row being parsed --------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;  /* bytes */
    int ascii;     /* all bytes < 0x80 (then a str is a memcpy) */
} Span;

#define SEG_MAX 16   /* the contract: at most 16 segment entries */
#define FLAGS_MAX 32 /* flags are unbounded in the contract; more than this goes slow (pairwise
                        duplicate check stays cheap) */

typedef struct {
    Span event_id, agent_id, environment, version, conversation_id;
    Span trace_id; /* n == 0: null or absent */
    int arm; /* 0 = null/absent, 1.. = index in ARM_NAMES */
    Span segment_raw, flags_raw;
    Span seg_k[SEG_MAX], seg_v[SEG_MAX];
    Span flag_k[FLAGS_MAX], flag_v[FLAGS_MAX];
    int seg_n, flag_n;
    double ts, latency, quality;
    int64_t turn;
    uint8_t bits;
} Row;

enum {
    F_EVENT_ID, F_TS, F_AGENT_ID, F_ENVIRONMENT, F_VERSION, F_ARM, F_CONVERSATION_ID, F_TURN,
    F_SEGMENT, F_LATENCY, F_QUALITY, F_ESCALATED, F_ERROR, F_COMPLIANCE, F_FLAGS, F_TOKENS_IN,
    F_TOKENS_OUT, F_COST, F_TRACE_ID, F_SCHEMA,
    F_UNKNOWN /* a key that is neither a Turn field nor "schema": its value is skipped */
};
#define KNOWN_BITS ((1u << F_UNKNOWN) - 1) /* duplicate check: known fields only */
#define REQUIRED ((1u << F_EVENT_ID) | (1u << F_TS) | (1u << F_AGENT_ID) | (1u << F_VERSION) | \
                  (1u << F_CONVERSATION_ID))

static const char *const ARM_NAMES[5] = {NULL, "baseline", "canary", "shadow", "live"};
static const char *const ARM_QUOTED[5] = {NULL, "\"baseline\"", "\"canary\"", "\"shadow\"", "\"live\""};
static const Py_ssize_t ARM_LENS[5] = {0, 8, 6, 6, 4};
static const unsigned char DEFAULT_ENV[] = "prod";
static const unsigned char EMPTY_OBJECT[] = "{}";

/* JSON whitespace */
static const unsigned char IS_WS[256] = {[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1};
#define SKIP_WS(p)          \
    while (IS_WS[*(p)]) {   \
        (p)++;              \
    }
#define IS_DIGIT(c) ((unsigned char)((c) - '0') < 10)

/* ---- strings ---------------------------------------------------------------------------------- */

/* Bytes that end the plain run of a string: '"', '\\', controls < 0x20 (NUL included) and non-ASCII. */
static unsigned char STR_STOP[256];

static void init_tables(void)
{
    for (int c = 0; c < 256; c++)
        STR_STOP[c] = (c < 0x20 || c == '"' || c == '\\' || c >= 0x80);
}

static inline int is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0 if invalid: overlongs,
   surrogates (U+D800..DFFF) and code points above U+10FFFF are refused, as Python's strict decoder
   does. Continuation bytes are tested one by one, so a NUL stops it. */
static inline int utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF)
        return is_cont(p[1]) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
        return (p[1] >= lo && p[1] <= hi && is_cont(p[2])) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
        return (p[1] >= lo && p[1] <= hi && is_cont(p[2]) && is_cont(p[3])) ? 4 : 0;
    }
    return 0;
}

/* 8 bytes at a time: nonzero when some byte of w is '"', '\\', below 0x20 or >= 0x80 (the
   "has a zero byte" / "has a byte less than n" tests of Bit Twiddling Hacks: exact as to whether
   there is one and which is the first; the byte loop after it confirms in any case). */
static inline uint64_t str_stop8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w) | w) & high;
}

/* p inside a string: the first byte at or after p that ends its plain run (STR_STOP), read a word at
   a time while whole words remain inside the message. */
static inline const unsigned char *plain_run(const unsigned char *p, const unsigned char *end)
{
    uint64_t w, stop;
    while (end - p >= 8) {
        memcpy(&w, p, 8);
        if ((stop = str_stop8(w))) {
#if LE_WORDS
            /* the lowest flagged byte is exact (borrows only flag bytes above a real one) */
            p += __builtin_ctzll(stop) >> 3;
#endif
            break;
        }
        p += 8;
    }
    while (!STR_STOP[*p])
        p++;
    return p;
}

/* p at the opening quote; end: the message's end (p < end). Fills the content span and its length
   in code points; returns the cursor after the closing quote, or NULL (slow) for an escape, a
   control byte or bad UTF-8. */
static inline const unsigned char *scan_str(const unsigned char *p, const unsigned char *end, Span *out,
                                     Py_ssize_t *chars)
{
    const unsigned char *start = ++p;
    Py_ssize_t extra = 0; /* bytes beyond the first of each multi-byte sequence */
    for (;;) {
        p = plain_run(p, end);
        if (*p == '"')
            break;
        if (*p < 0x80)
            return NULL; /* backslash or control byte */
        int len = utf8_len(p);
        if (!len)
            return NULL;
        p += len;
        extra += len - 1;
    }
    out->p = start;
    out->n = p - start;
    out->ascii = (extra == 0);
    *chars = out->n - extra;
    return p + 1;
}

/* A string with 1..max code points. */
static const unsigned char *scan_id(const unsigned char *p, const unsigned char *end, Span *out, Py_ssize_t max)
{
    Py_ssize_t chars;
    if (*p != '"' || !(p = scan_str(p, end, out, &chars)) || chars < 1 || chars > max)
        return NULL;
    return p;
}

/* ---- numbers ---------------------------------------------------------------------------------- */

typedef struct {
    uint64_t mant; /* significant digits, leading zeros dropped */
    int nd;        /* number of significant digits */
    int exp10;     /* value = mant * 10^exp10 */
    int is_int;    /* no fraction, no exponent */
    int neg;
} Num;

/* Strict JSON number grammar. Returns the cursor after it, or NULL (slow) when malformed or when it
   has more digits than we convert (19). */
static inline const unsigned char *scan_number(const unsigned char *p, Num *out)
{
    uint64_t m = 0;
    int nd = 0, frac = 0, e = 0, neg = 0, is_int = 1;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (IS_DIGIT(*p)) {
            if (nd >= 19)
                return NULL;
            m = m * 10 + (uint64_t)(*p - '0');
            nd++;
            p++;
        }
    } else {
        return NULL;
    }
    if (*p == '.') {
        is_int = 0;
        p++;
        if (!IS_DIGIT(*p))
            return NULL;
        while (IS_DIGIT(*p)) {
            if (frac >= 400)
                return NULL;
            if (m || *p != '0') {
                if (nd >= 19)
                    return NULL;
                m = m * 10 + (uint64_t)(*p - '0');
                nd++;
            }
            frac++;
            p++;
        }
    }
    if (*p == 'e' || *p == 'E') {
        int esign = 1;
        is_int = 0;
        p++;
        if (*p == '+') {
            p++;
        } else if (*p == '-') {
            esign = -1;
            p++;
        }
        if (!IS_DIGIT(*p))
            return NULL;
        while (IS_DIGIT(*p)) {
            if (e >= 10000)
                return NULL;
            e = e * 10 + (*p - '0');
            p++;
        }
        e *= esign;
    }
    out->mant = m;
    out->nd = nd;
    out->exp10 = e - frac;
    out->is_int = is_int;
    out->neg = neg;
    return p;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The classic exact case (Clinger): a mantissa below 10^15 < 2^53 and 10^|k| with |k| <= 22 are
   both exact doubles, so one IEEE multiplication or division gives the correctly rounded value,
   which is what msgspec (a correctly rounding parser) yields too. 0 = not this case (slow). */
static inline int num_to_double(const Num *x, double *out)
{
    if (x->nd > 15 || x->exp10 < -22 || x->exp10 > 22)
        return 0;
    double m = (double)x->mant;
    double v = x->exp10 >= 0 ? m * POW10[x->exp10] : m / POW10[-x->exp10];
    *out = x->neg ? -v : v;
    return 1;
}

/* More significant digits than the exact case (up to the 19 scan_number takes, as a double's
   shortest form has 17): Python's own correctly rounding conversion of the text, which gives the
   double msgspec's correctly rounding parser gives. Only well inside the finite range, and for a
   short text (the digits, a point, an exponent). 0 = slow. */
static int long_to_double(const unsigned char *start, const unsigned char *end, const Num *x, double *out)
{
    char buf[48];
    size_t n = (size_t)(end - start);
    if (n >= sizeof buf || x->exp10 + x->nd > 300 || x->exp10 < -300)
        return 0;
    memcpy(buf, start, n);
    buf[n] = 0;
    char *stop = NULL;
    double v = PyOS_string_to_double(buf, &stop, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (stop != buf + n || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

/* A non-negative float field (an int JSON value is accepted as msgspec does; '-' goes slow, which
   also keeps -0.0 and -0 out). */
static inline const unsigned char *scan_nonneg(const unsigned char *p, double *out)
{
    const unsigned char *start = p;
    Num x;
    if (!(p = scan_number(p, &x)) || x.neg)
        return NULL;
    if (!num_to_double(&x, out) && !long_to_double(start, p, &x, out))
        return NULL;
    return p;
}

/* A non-negative number that msgspec certainly accepts as a finite float (it refuses only values
   that overflow to inf), without converting it: mant < 10^19 and 10^exp10 <= 10^280. */
static inline const unsigned char *scan_finite_nonneg(const unsigned char *p)
{
    Num x;
    if (!(p = scan_number(p, &x)) || x.neg || x.exp10 > 280 || x.exp10 < -280)
        return NULL;
    return p;
}

/* A non-negative int64 field: a JSON integer of at most 18 digits (< 2^63). */
static inline const unsigned char *scan_count(const unsigned char *p, int64_t *out)
{
    Num x;
    if (!(p = scan_number(p, &x)) || x.neg || !x.is_int || x.nd > 18)
        return NULL;
    *out = (int64_t)x.mant;
    return p;
}

static inline const unsigned char *scan_null(const unsigned char *p)
{
    return (p[0] == 'n' && p[1] == 'u' && p[2] == 'l' && p[3] == 'l') ? p + 4 : NULL;
}

static inline const unsigned char *scan_bool(const unsigned char *p, int *out)
{
    if (p[0] == 't' && p[1] == 'r' && p[2] == 'u' && p[3] == 'e') {
        *out = 1;
        return p + 4;
    }
    if (p[0] == 'f' && p[1] == 'a' && p[2] == 'l' && p[3] == 's' && p[4] == 'e') {
        *out = 0;
        return p + 5;
    }
    return NULL;
}

/* ---- skipped values (unknown keys) ------------------------------------------------------------ */

/* msgspec's Decoder(Turn) ignores an unknown key but still parses its value with json_skip, which
   checks the JSON grammar and nothing else: no number range (1e999, 400-digit integers pass), no
   limit on duplicate unknown keys. The functions below accept a subset of what it accepts, measured
   in tests/test_turnscan.py against msgspec 0.22:
   - strings: the escapes \" \\ \/ \b \f \n \r \t \uXXXX; a \u escape of a low surrogate
     (DC00..DFFF) alone, or of a high surrogate (D800..DBFF) not followed by \u and a low one, is
     refused by msgspec, and here too; raw control bytes < 0x20 are refused by both;
   - invalid UTF-8 inside a skipped string or key: msgspec does not check it, we do (slow): the
     contract is UTF-8, so such a producer is broken, and a fast message stays valid UTF-8 throughout
     (the rows and the raw bytes may go on to consumers that assume it);
   - containers nested deeper than SKIP_DEPTH: slow. msgspec recurses through
     Py_EnterRecursiveCall (a RecursionError past the interpreter's limit of ~1000 frames, not a
     DecodeError); 32 levels stay far below it. */
#define SKIP_DEPTH 32

static inline int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) { /* one byte at a time: a NUL stops it */
        unsigned char c = p[i];
        unsigned d;
        if (IS_DIGIT(c))
            d = (unsigned)(c - '0');
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (unsigned)((c | 0x20) - 'a' + 10);
        else
            return 0;
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

/* p at a backslash inside a string: the cursor after the escape, or NULL where msgspec refuses it. */
static const unsigned char *skip_escape(const unsigned char *p)
{
    unsigned cp, lo;
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': return p + 2;
    case 'u':
        if (!hex4(p + 2, &cp) || (cp >= 0xDC00 && cp <= 0xDFFF))
            return NULL;
        if (cp < 0xD800 || cp > 0xDBFF)
            return p + 6;
        /* a high surrogate: msgspec requires the low half right after it */
        if (p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return NULL;
        return p + 12;
    default: return NULL;
    }
}

/* p at the opening quote of a string whose content is not needed: the cursor after the closing
   quote, or NULL (slow) for a control byte, invalid UTF-8 or an escape msgspec refuses. */
static const unsigned char *skip_str(const unsigned char *p, const unsigned char *end)
{
    p++;
    for (;;) {
        p = plain_run(p, end);
        if (*p == '"')
            return p + 1;
        if (*p == '\\') {
            if (!(p = skip_escape(p)))
                return NULL;
        } else if (*p < 0x80) {
            return NULL; /* control byte (or the NUL after the message) */
        } else {
            int len = utf8_len(p);
            if (!len)
                return NULL;
            p += len;
        }
    }
}

/* JSON number grammar only, as msgspec checks a skipped number (no range: it is not converted). */
static const unsigned char *skip_number(const unsigned char *p)
{
    if (*p == '-')
        p++;
    if (*p == '0') {
        p++; /* a digit after a leading zero is refused by the caller's ',' / '}' / ']' test */
    } else if (*p >= '1' && *p <= '9') {
        while (IS_DIGIT(*p))
            p++;
    } else {
        return NULL;
    }
    if (*p == '.') {
        p++;
        if (!IS_DIGIT(*p))
            return NULL;
        while (IS_DIGIT(*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!IS_DIGIT(*p))
            return NULL;
        while (IS_DIGIT(*p))
            p++;
    }
    return p;
}

/* p at the first byte of any JSON value (whitespace skipped); depth: containers around it inside
   the unknown field. The cursor after the value, or NULL (slow). */
static const unsigned char *skip_value(const unsigned char *p, const unsigned char *end, int depth)
{
    int b;
    switch (*p) {
    case '"': return skip_str(p, end);
    case 'n': return scan_null(p);
    case 't':
    case 'f': return scan_bool(p, &b);
    case '[':
    case '{': {
        unsigned char close = *p == '[' ? ']' : '}';
        if (depth >= SKIP_DEPTH)
            return NULL;
        p++;
        SKIP_WS(p);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (close == '}') { /* a key (duplicates are fine: msgspec skips them one by one) */
                if (*p != '"' || !(p = skip_str(p, end)))
                    return NULL;
                SKIP_WS(p);
                if (*p != ':')
                    return NULL;
                p++;
                SKIP_WS(p);
            }
            if (!(p = skip_value(p, end, depth + 1)))
                return NULL;
            SKIP_WS(p);
            if (*p == ',') {
                p++;
                SKIP_WS(p); /* then a value (or key): a trailing comma fails there, as in msgspec */
                continue;
            }
            return *p == close ? p + 1 : NULL;
        }
    }
    default: return skip_number(p);
    }
}

/* ---- timestamps ------------------------------------------------------------------------------- */

static inline int digits(const unsigned char *p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!IS_DIGIT(p[i]))
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int DAYS[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return DAYS[m - 1];
}

/* The last validated "YYYY-MM-DDTHH:MM" and its seconds since the epoch (local time): consecutive
   events mostly share their minute, which then skips the date's parsing and calendar. */
typedef struct {
    unsigned char prefix[16];
    int valid;
    int64_t base;
} TsCache;

/* Exactly YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM). The value is the integer number of
   microseconds since the epoch divided by 1e6 once, in double: datetime.timestamp() of an aware
   datetime computes that same quotient (int / int true division, correctly rounded), and so does
   the C division while |us| < 2^53 (years ~1685..2255); outside that, slow. */
static int parse_rfc3339(const Span *s, TsCache *cache, double *out)
{
    const unsigned char *p = s->p;
    Py_ssize_t n = s->n;
    int se, us = 0, oh = 0, om = 0, sign = 0;
    if (n < 20 || n > 32 || !s->ascii)
        return 0;
    if (!cache->valid || memcmp(p, cache->prefix, 16) != 0) {
        int y, mo, d, h, mi;
        if (!digits(p, 4, &y) || p[4] != '-' || !digits(p + 5, 2, &mo) || p[7] != '-' ||
            !digits(p + 8, 2, &d) || p[10] != 'T' || !digits(p + 11, 2, &h) || p[13] != ':' ||
            !digits(p + 14, 2, &mi) || y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) ||
            h > 23 || mi > 59)
            return 0;
        memcpy(cache->prefix, p, 16);
        cache->base = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60;
        cache->valid = 1;
    }
    if (p[16] != ':' || !digits(p + 17, 2, &se) || se > 59)
        return 0;
    Py_ssize_t i = 19;
    if (p[i] == '.') {
        int nf = 0;
        i++;
        while (i < n && IS_DIGIT(p[i])) {
            if (++nf > 6)
                return 0;
            us = us * 10 + (p[i] - '0');
            i++;
        }
        if (!nf)
            return 0;
        for (int k = nf; k < 6; k++)
            us *= 10; /* ".5" is 500000 us */
    }
    if (i < n && p[i] == 'Z') {
        i++;
    } else if (i + 6 <= n && (p[i] == '+' || p[i] == '-') && digits(p + i + 1, 2, &oh) &&
               p[i + 3] == ':' && digits(p + i + 4, 2, &om)) {
        sign = p[i] == '+' ? 1 : -1;
        i += 6;
    } else {
        return 0;
    }
    if (i != n || oh > 23 || om > 59)
        return 0;
    int64_t total = (cache->base + se - sign * (oh * 3600 + om * 60)) * 1000000 + us;
    const int64_t limit = (int64_t)1 << 53;
    if (total >= limit || total <= -limit)
        return 0;
    *out = (double)total / 1e6;
    return 1;
}

/* ---- objects of str -> str -------------------------------------------------------------------- */

/* Equality of n bytes, a word at a time (the spans are short: inlined beats a memcmp call). */
static inline int eq_mem(const unsigned char *a, const unsigned char *b, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return 0;
    }
    for (; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static inline int span_eq(const Span *a, const Span *b)
{
    return a->n == b->n && eq_mem(a->p, b->p, a->n);
}

/* p at a string (its quote) whose exact bytes, closing quote included, are those of `last` (a
   string validated earlier for the same field): then it is valid too and is not scanned again. */
static inline const unsigned char *same_str(const unsigned char *p, const unsigned char *end, const Span *last,
                                            Span *out)
{
    Py_ssize_t n = last->n;
    if (!last->p || *p != '"' || end - p < n + 2 || p[n + 1] != '"' || !eq_mem(p + 1, last->p, n))
        return NULL;
    out->p = p + 1;
    out->n = n;
    out->ascii = last->ascii;
    return p + n + 2;
}

/* p at '{'. Keys any string, values at most vmax code points (-1: any), at most kmax entries,
   no duplicate keys (msgspec would keep the last one; rare enough to leave to the slow path).
   ck, cv (or NULL): the previous object's keys and values by position, validated under the same
   rules; a string equal to its counterpart is not scanned again (segments repeat their keys). */
static const unsigned char *scan_strmap(const unsigned char *p, const unsigned char *end, Span *raw, Span *ks,
                                        Span *vs, int *count, int kmax, Py_ssize_t vmax, Span *ck, Span *cv)
{
    const unsigned char *start = p, *q;
    int n = 0;
    Py_ssize_t chars;
    p++;
    SKIP_WS(p);
    if (*p != '}') {
        for (;;) {
            if (n >= kmax)
                return NULL;
            if (ck && (q = same_str(p, end, &ck[n], &ks[n]))) {
                p = q;
            } else {
                if (*p != '"' || !(p = scan_str(p, end, &ks[n], &chars)))
                    return NULL;
                if (ck)
                    ck[n] = ks[n];
            }
            SKIP_WS(p);
            if (*p != ':')
                return NULL;
            p++;
            SKIP_WS(p);
            if (cv && (q = same_str(p, end, &cv[n], &vs[n]))) {
                p = q;
            } else {
                if (*p != '"' || !(p = scan_str(p, end, &vs[n], &chars)) || (vmax >= 0 && chars > vmax))
                    return NULL;
                if (cv)
                    cv[n] = vs[n];
            }
            for (int j = 0; j < n; j++)
                if (span_eq(&ks[j], &ks[n]))
                    return NULL;
            n++;
            SKIP_WS(p);
            if (*p == ',') {
                p++;
                SKIP_WS(p);
                continue;
            }
            if (*p != '}')
                return NULL;
            break;
        }
    }
    p++;
    raw->p = start;
    raw->n = p - start;
    raw->ascii = 0; /* unused for raw texts */
    *count = n;
    return p;
}

/* ---- one message ------------------------------------------------------------------------------ */

/* Equality of n bytes with a literal; n is a constant after inlining, so this unrolls (a libc memcmp
   call per key was a tenth of the scan). */
static inline int eq_lit(const unsigned char *k, const char *lit, int n)
{
    for (int i = 0; i < n; i++)
        if (k[i] != (unsigned char)lit[i])
            return 0;
    return 1;
}

static inline int field_id(const unsigned char *k, Py_ssize_t n)
{
#define IS(name) eq_lit(k, name, (int)sizeof(name) - 1)
    switch (n) {
    case 2: return IS("ts") ? F_TS : -1;
    case 3: return IS("arm") ? F_ARM : -1;
    case 4: return IS("turn") ? F_TURN : -1;
    case 5: return IS("error") ? F_ERROR : IS("flags") ? F_FLAGS : -1;
    case 6: return IS("schema") ? F_SCHEMA : -1;
    case 7: return IS("version") ? F_VERSION : IS("segment") ? F_SEGMENT : IS("quality") ? F_QUALITY : -1;
    case 8:
        return IS("event_id") ? F_EVENT_ID : IS("agent_id") ? F_AGENT_ID : IS("cost_usd") ? F_COST
             : IS("trace_id") ? F_TRACE_ID : -1;
    case 9: return IS("escalated") ? F_ESCALATED : IS("tokens_in") ? F_TOKENS_IN : -1;
    case 10: return IS("latency_ms") ? F_LATENCY : IS("tokens_out") ? F_TOKENS_OUT : -1;
    case 11: return IS("environment") ? F_ENVIRONMENT : -1;
    case 15: return IS("conversation_id") ? F_CONVERSATION_ID : -1;
    case 20: return IS("compliance_violation") ? F_COMPLIANCE : -1;
    default: return -1;
    }
#undef IS
}

/* Names by field id followed by their closing quote, zero-padded to whole words. */
static const char FIELD_KEYS[F_SCHEMA + 1][24] = {
    "event_id\"", "ts\"", "agent_id\"", "environment\"", "version\"", "arm\"", "conversation_id\"",
    "turn\"", "segment\"", "latency_ms\"", "quality\"", "escalated\"", "error\"",
    "compliance_violation\"", "flags\"", "tokens_in\"", "tokens_out\"", "cost_usd\"", "trace_id\"", "schema\"",
};
static const Py_ssize_t FIELD_LENS[F_SCHEMA + 1] = {8, 2, 8, 11, 7, 3, 15, 4, 7, 10, 7, 9, 5, 20, 5, 9, 10, 8, 8, 6};

#define ORDER_LEN 24
#define NO_FIELD 0xFF

/* Per field, the masks of its three words of FIELD_KEYS (bytes beyond name + quote zeroed). */
static uint64_t KEY_MASKS[F_SCHEMA + 1][3];

static void init_key_masks(void)
{
    for (int f = 0; f <= F_SCHEMA; f++)
        for (int w = 0; w < 3; w++) {
            unsigned char m[8];
            for (int i = 0; i < 8; i++)
                m[i] = (w * 8 + i) < FIELD_LENS[f] + 1 ? 0xFF : 0;
            memcpy(&KEY_MASKS[f][w], m, 8);
        }
}

/* k (after an opening quote) is field f's name and its closing quote: three masked word compares
   when 24 bytes are inside the message, else byte by byte. */
static inline int is_key(const unsigned char *k, const unsigned char *end, int f)
{
    const unsigned char *name = (const unsigned char *)FIELD_KEYS[f];
    Py_ssize_t len = FIELD_LENS[f] + 1; /* with the quote */
    if (end - k >= 24) {
        uint64_t x0, x1, x2, y0, y1, y2;
        memcpy(&x0, k, 8);
        memcpy(&x1, k + 8, 8);
        memcpy(&x2, k + 16, 8);
        memcpy(&y0, name, 8);
        memcpy(&y1, name + 8, 8);
        memcpy(&y2, name + 16, 8);
        return !(((x0 ^ y0) & KEY_MASKS[f][0]) | ((x1 ^ y1) & KEY_MASKS[f][1]) | ((x2 ^ y2) & KEY_MASKS[f][2]));
    }
    if (end - k < len)
        return 0;
    for (Py_ssize_t i = 0; i < len; i++)
        if (k[i] != name[i])
            return 0;
    return 1;
}

/* What one message leaves for the next: most of a batch comes from one producer (one key order) and
   one agent, environment and version. */
typedef struct {
    /* the field ids in the order the previous message had them: the key at position j is checked
       against that guess first (one comparison instead of a scan of the key and a lookup) */
    uint8_t order[ORDER_LEN];
    TsCache ts;
    /* the last validated values of these fields (spans into earlier messages of the call) */
    Span agent_id, environment, version;
    Span seg_k[SEG_MAX], seg_v[SEG_MAX];
} Ctx;

/* An id field through the cache of its last value. */
static inline const unsigned char *scan_id_cached(const unsigned char *p, const unsigned char *end, Span *out,
                                                  Py_ssize_t max, Span *last)
{
    const unsigned char *q = same_str(p, end, last, out);
    if (q)
        return q;
    if ((q = scan_id(p, end, out, max)))
        *last = *out;
    return q;
}

/* p at a quote: the string literal lit (quotes included, n bytes) is there. */
static inline const unsigned char *is_lit(const unsigned char *p, const unsigned char *end, const char *lit,
                                          Py_ssize_t n)
{
    return (end - p >= n && eq_mem(p, (const unsigned char *)lit, n)) ? p + n : NULL;
}

/* 1 when the message is fast (row filled), 0 when slow. s[n] must be NUL (true of any bytes). */
static int parse_turn(const unsigned char *s, Py_ssize_t n, Row *r, Ctx *ctx)
{
    uint8_t *order = ctx->order;
    const unsigned char *p = s, *end = s + n;
    unsigned seen = 0;
    Py_ssize_t chars;
    int b;
    Span tmp;
    Num num;

    r->environment.p = DEFAULT_ENV;
    r->environment.n = 4;
    r->environment.ascii = 1;
    r->arm = 0;
    r->segment_raw.p = r->flags_raw.p = EMPTY_OBJECT;
    r->segment_raw.n = r->flags_raw.n = 2;
    r->seg_n = r->flag_n = 0;
    r->latency = r->quality = Py_NAN;
    r->turn = 0;
    r->bits = 0;
    r->trace_id.n = 0;

    SKIP_WS(p);
    if (*p != '{')
        return 0;
    p++;
    SKIP_WS(p);
    for (int j = 0;; j++) {
        if (*p != '"')
            return 0;
        const unsigned char *k = ++p;
        int f = j < ORDER_LEN ? order[j] : NO_FIELD;
        if (f != NO_FIELD && is_key(k, end, f)) {
            p = k + FIELD_LENS[f];
        } else {
            /* field names are [a-z_]: a key with any other byte is unknown, unless it has an escape
               (it could spell a field name: slow) */
            while ((*p >= 'a' && *p <= 'z') || *p == '_')
                p++;
            if (*p == '"' && (f = field_id(k, p - k)) >= 0) {
                if (j < ORDER_LEN)
                    order[j] = (uint8_t)f;
            } else {
                if (!(p = scan_str(k - 1, end, &tmp, &chars)))
                    return 0;
                p--; /* at the closing quote, as for a known key */
                f = F_UNKNOWN;
                if (j < ORDER_LEN)
                    order[j] = NO_FIELD;
            }
        }
        /* a repeated known key goes slow (msgspec keeps the last value); unknown keys may repeat */
        if (seen & (1u << f) & KNOWN_BITS)
            return 0;
        seen |= 1u << f;
        p++;
        SKIP_WS(p);
        if (*p != ':')
            return 0;
        p++;
        SKIP_WS(p);
        switch (f) {
        case F_EVENT_ID: p = scan_id(p, end, &r->event_id, 128); break;
        case F_AGENT_ID: p = scan_id_cached(p, end, &r->agent_id, 128, &ctx->agent_id); break;
        case F_VERSION: p = scan_id_cached(p, end, &r->version, 128, &ctx->version); break;
        case F_CONVERSATION_ID: p = scan_id(p, end, &r->conversation_id, 256); break;
        case F_TRACE_ID:
            if (*p == 'n')
                p = scan_null(p);
            else
                p = scan_id(p, end, &r->trace_id, 64);
            break;
        case F_ENVIRONMENT: {
            const unsigned char *q = same_str(p, end, &ctx->environment, &r->environment);
            if (q)
                p = q;
            else if (*p == '"' && (p = scan_str(p, end, &r->environment, &chars)))
                ctx->environment = r->environment;
            break;
        }
        case F_SCHEMA: p = is_lit(p, end, "\"watcher.turn/v1\"", 17); break;
        case F_ARM:
            if (*p == 'n') {
                p = scan_null(p);
                break;
            }
            for (int a = 1; a < 5 && !r->arm; a++) {
                const unsigned char *q = is_lit(p, end, ARM_QUOTED[a], ARM_LENS[a] + 2);
                if (q) {
                    r->arm = a;
                    p = q;
                }
            }
            if (!r->arm)
                return 0; /* any other string (escaped or not) is not one of the four */
            break;
        case F_TS:
            if (*p == '"') {
                if (!(p = scan_str(p, end, &tmp, &chars)) || !parse_rfc3339(&tmp, &ctx->ts, &r->ts))
                    return 0;
            } else {
                /* [-62135596800, 253402300800): datetime's range, as event_schema._Ts; a negative
                   zero goes slow (msgspec reads "-0" as an int, 0.0, but "-0.0" as -0.0) */
                const unsigned char *start = p;
                if (!(p = scan_number(p, &num)) || (num.neg && num.mant == 0) ||
                    !(num_to_double(&num, &r->ts) || long_to_double(start, p, &num, &r->ts)) ||
                    !(r->ts >= -62135596800.0 && r->ts < 253402300800.0))
                    return 0;
            }
            break;
        case F_TURN: p = scan_count(p, &r->turn); break;
        case F_TOKENS_IN:
        case F_TOKENS_OUT: {
            int64_t ignored;
            p = *p == 'n' ? scan_null(p) : scan_count(p, &ignored);
            break;
        }
        case F_LATENCY: p = *p == 'n' ? scan_null(p) : scan_nonneg(p, &r->latency); break;
        case F_COST: /* not a column: only msgspec's acceptance matters, no conversion */
            p = *p == 'n' ? scan_null(p) : scan_finite_nonneg(p);
            break;
        case F_QUALITY:
            if (*p == 'n') {
                p = scan_null(p);
            } else if (!(p = scan_nonneg(p, &r->quality)) || r->quality > 1.0) {
                return 0;
            }
            break;
        case F_ESCALATED:
        case F_ERROR:
        case F_COMPLIANCE:
            if (!(p = scan_bool(p, &b)))
                return 0;
            if (b)
                r->bits |= (uint8_t)(f == F_ESCALATED ? 1 : f == F_ERROR ? 2 : 4);
            break;
        case F_SEGMENT:
            p = *p == '{' ? scan_strmap(p, end, &r->segment_raw, r->seg_k, r->seg_v, &r->seg_n, SEG_MAX, 64,
                                             ctx->seg_k, ctx->seg_v) : NULL;
            break;
        case F_FLAGS:
            p = *p == '{' ? scan_strmap(p, end, &r->flags_raw, r->flag_k, r->flag_v, &r->flag_n, FLAGS_MAX, -1, NULL, NULL)
                          : NULL;
            break;
        case F_UNKNOWN: p = skip_value(p, end, 0); break;
        default: return 0;
        }
        if (!p)
            return 0;
        SKIP_WS(p);
        if (*p == ',') {
            p++;
            SKIP_WS(p);
            continue;
        }
        if (*p != '}')
            return 0;
        p++;
        break;
    }
    SKIP_WS(p);
    return p == end && (seen & REQUIRED) == REQUIRED;
}

/* ---- per-call interning ----------------------------------------------------------------------- */

/* A key: route keys use a, b, c (agent, environment, version) and arm; raw texts use a only. The
   spans point into the messages, which the call's snapshot tuple keeps alive. */
typedef struct {
    Span a, b, c;
    int arm;
    uint64_t hash;
} Key;

/* Open addressing over codes; codes are dense (0..count-1) and index keys[] and the output list.
   It grows with the number of distinct keys (at most one per message), so equal keys always get one
   code: downstream per-key work may rely on codes being distinct keys. */
typedef struct {
    Py_ssize_t *slots; /* code + 1; 0 = empty */
    size_t mask;
    Key *keys;
    Py_ssize_t count, cap;
    Py_ssize_t last; /* the previous row's code: most consecutive rows share one */
    int route;
} Table;

static inline uint64_t mix(uint64_t h, uint64_t w)
{
    h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

/* Words times per-position odd constants, summed: the multiplications are independent (a chain of
   mix() per word was a tenth of the scan on ~55-byte segment texts); one mix() at the end. Equal
   hashes are only a hint: every hit is confirmed byte for byte. */
static uint64_t hash_span(const Span *s, uint64_t h)
{
    static const uint64_t K[4] = {0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL,
                                  0xD6E8FEB86659FD93ULL};
    const unsigned char *p = s->p;
    Py_ssize_t n = s->n, i = 0;
    uint64_t w, acc = (uint64_t)n;
    for (; n >= 8; n -= 8, p += 8, i++) {
        memcpy(&w, p, 8);
        acc += (w ^ (uint64_t)i) * K[i & 3];
    }
    w = 0;
    memcpy(&w, p, (size_t)n);
    acc += (w ^ (uint64_t)i) * K[i & 3];
    return mix(h, acc);
}

static inline int key_eq(const Table *t, const Key *x, const Key *y)
{
    if (!t->route)
        return span_eq(&x->a, &y->a);
    return x->arm == y->arm && span_eq(&x->a, &y->a) && span_eq(&x->b, &y->b) && span_eq(&x->c, &y->c);
}

static int table_init(Table *t, int route)
{
    memset(t, 0, sizeof(*t));
    t->route = route;
    t->last = -1;
    t->mask = 63;
    t->cap = 16;
    t->slots = PyMem_Calloc(t->mask + 1, sizeof(Py_ssize_t));
    t->keys = PyMem_Malloc((size_t)t->cap * sizeof(Key));
    if (!t->slots || !t->keys) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void table_free(Table *t)
{
    PyMem_Free(t->slots);
    PyMem_Free(t->keys);
}

/* The key's code, *is_new = 1 when it was added (the caller then appends its object); -1 on
   MemoryError. */
static Py_ssize_t table_code(Table *t, Key *k, int *is_new)
{
    *is_new = 0;
    if (t->last >= 0 && key_eq(t, &t->keys[t->last], k))
        return t->last;
    k->hash = t->route ? hash_span(&k->c, hash_span(&k->b, hash_span(&k->a, (uint64_t)k->arm)))
                       : hash_span(&k->a, 0);
    size_t i = (size_t)k->hash & t->mask;
    while (t->slots[i]) {
        Py_ssize_t c = t->slots[i] - 1;
        if (t->keys[c].hash == k->hash && key_eq(t, &t->keys[c], k))
            return t->last = c;
        i = (i + 1) & t->mask;
    }
    if (t->count == t->cap) {
        Key *keys = PyMem_Realloc(t->keys, (size_t)t->cap * 2 * sizeof(Key));
        if (!keys) {
            PyErr_NoMemory();
            return -1;
        }
        t->keys = keys;
        t->cap *= 2;
    }
    Py_ssize_t code = t->count++;
    t->keys[code] = *k;
    t->slots[i] = code + 1;
    if ((size_t)t->count * 2 > t->mask) { /* keep the load under 1/2: rebuild at twice the size */
        size_t mask = t->mask * 2 + 1;
        Py_ssize_t *slots = PyMem_Calloc(mask + 1, sizeof(Py_ssize_t));
        if (!slots) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t c = 0; c < t->count; c++) {
            size_t j = (size_t)t->keys[c].hash & mask;
            while (slots[j])
                j = (j + 1) & mask;
            slots[j] = c + 1;
        }
        PyMem_Free(t->slots);
        t->slots = slots;
        t->mask = mask;
    }
    *is_new = 1;
    return t->last = code;
}

/* ---- Python objects --------------------------------------------------------------------------- */

static PyObject *ARM_STR[5];  /* NULL, "baseline", ... (module lifetime) */
static PyObject *PROD_STR;

static PyObject *make_str(const Span *s)
{
    if (!s->ascii) /* validated above, so this strict decode succeeds (or raises MemoryError) */
        return PyUnicode_DecodeUTF8((const char *)s->p, s->n, "strict");
    PyObject *o = PyUnicode_New(s->n, 127);
    if (o)
        memcpy(PyUnicode_DATA(o), s->p, (size_t)s->n);
    return o;
}

static PyObject *make_dict(const Span *ks, const Span *vs, int n)
{
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *k = make_str(&ks[i]);
        PyObject *v = k ? make_str(&vs[i]) : NULL;
        int rc = v ? PyDict_SetItem(d, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

/* The code of a str -> str object's raw text in t; the dict of a text seen for the first time is
   appended to out. -1 on error (an exception is set). */
static Py_ssize_t intern_map(Table *t, const Span *raw, const Span *ks, const Span *vs, int n, PyObject *out)
{
    Key k;
    int is_new;
    memset(&k, 0, sizeof k);
    k.a = *raw;
    Py_ssize_t code = table_code(t, &k, &is_new);
    if (code < 0 || !is_new)
        return code;
    PyObject *d = make_dict(ks, vs, n);
    if (!d || PyList_Append(out, d) < 0) {
        Py_XDECREF(d);
        return -1;
    }
    Py_DECREF(d);
    return code;
}

static PyObject *make_route(const Row *r)
{
    PyObject *env;
    if (r->environment.n == 4 && memcmp(r->environment.p, "prod", 4) == 0) {
        env = Py_NewRef(PROD_STR);
    } else if (!(env = make_str(&r->environment))) {
        return NULL;
    }
    PyObject *agent = make_str(&r->agent_id);
    PyObject *version = agent ? make_str(&r->version) : NULL;
    if (!version) {
        Py_XDECREF(agent);
        Py_DECREF(env);
        return NULL;
    }
    PyObject *arm = r->arm ? ARM_STR[r->arm] : Py_None;
    PyObject *t = PyTuple_Pack(4, agent, env, version, arm);
    Py_DECREF(agent);
    Py_DECREF(env);
    Py_DECREF(version);
    return t;
}

static PyObject *bytes_of(const void *p, Py_ssize_t n, size_t itemsize)
{
    return PyBytes_FromStringAndSize((const char *)p, n * (Py_ssize_t)itemsize);
}

static PyObject *list_of(PyObject **items, Py_ssize_t n) /* steals the items */
{
    PyObject *l = PyList_New(n);
    if (!l)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(l, i, items[i]);
        items[i] = NULL;
    }
    return l;
}

PyDoc_STRVAR(scan_doc,
"scan(values, max_bytes) -> tuple\n\n"
"Sort watcher.turn/v1 messages into fast rows (decoded into columns) and slow indices.\n"
"A message is fast only if msgspec's Turn decoder certainly accepts it with these same values.\n"
"Returns (fast_index, slow, ts, latency, quality, bits, turn, event_id, conversation_id,\n"
"route_code, route_keys, segment_code, segments, flag_code, flag_dicts, trace_id); n = fast rows:\n"
"fast_index, turn, route_code, segment_code, flag_code: bytes of n int64; ts, latency, quality:\n"
"bytes of n float64 (NaN for null/absent); bits: n uint8 (1 escalated, 2 error,\n"
"4 compliance_violation); event_id, conversation_id: lists of n str; slow: ascending list of int;\n"
"route_keys: (agent_id, environment, version, arm or None) per code in order of first appearance;\n"
"segments, flag_dicts: one dict per distinct raw object text (code order); trace_id: a list of n\n"
"str or None, or None when no fast row has one.");

enum { C_IDX, C_TS, C_LAT, C_Q, C_TURN, C_ROUTE, C_SEG, C_FLAG, N_COLS8 };

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan(values, max_bytes) takes exactly 2 arguments");
        return NULL;
    }
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[1]);
    if (max_bytes == -1 && PyErr_Occurred())
        return NULL;
    /* A snapshot: holds every message (interned spans point into them) even if the caller's list
       changed during the call (a finalizer run by the garbage collector could do that). */
    PyObject *items = PySequence_Tuple(args[0]);
    if (!items)
        return NULL;
    Py_ssize_t total = PyTuple_GET_SIZE(items);
    Py_ssize_t alloc = total ? total : 1;

    PyObject *result = NULL, *slow = NULL, *routes = NULL, *segs = NULL, *flags = NULL;
    PyObject **eids = NULL, **cids = NULL, **tids = NULL;
    Py_ssize_t ntrace = 0; /* fast rows with a trace id */
    uint8_t *bits = NULL;
    void *cols[N_COLS8] = {NULL};
    Table rt, st, ft;
    Py_ssize_t nfast = 0;
    int tables = 0;
    Row *r = PyMem_Malloc(sizeof(Row));
    Ctx ctx;

    if (!r)
        goto nomem;
    memset(&ctx, 0, sizeof(ctx));
    memset(ctx.order, NO_FIELD, sizeof(ctx.order));
    for (int c = 0; c < N_COLS8; c++)
        if (!(cols[c] = PyMem_Malloc((size_t)alloc * 8)))
            goto nomem;
    eids = PyMem_Calloc((size_t)alloc, sizeof(PyObject *));
    cids = PyMem_Calloc((size_t)alloc, sizeof(PyObject *));
    tids = PyMem_Calloc((size_t)alloc, sizeof(PyObject *));
    bits = PyMem_Malloc((size_t)alloc);
    if (!eids || !cids || !tids || !bits)
        goto nomem;
    if (table_init(&rt, 1) < 0 || (tables = 1, table_init(&st, 0) < 0) || (tables = 2, table_init(&ft, 0) < 0))
        goto fail;
    tables = 3;
    if (!(slow = PyList_New(0)) || !(routes = PyList_New(0)) || !(segs = PyList_New(0)) ||
        !(flags = PyList_New(0)))
        goto fail;

    int64_t *idx = cols[C_IDX], *turn = cols[C_TURN], *rcode = cols[C_ROUTE], *scode = cols[C_SEG],
            *fcode = cols[C_FLAG];
    double *ts = cols[C_TS], *lat = cols[C_LAT], *q = cols[C_Q];
    for (Py_ssize_t i = 0; i < total; i++) {
        PyObject *raw = PyTuple_GET_ITEM(items, i);
        if (!PyBytes_CheckExact(raw) || PyBytes_GET_SIZE(raw) > max_bytes ||
            !parse_turn((const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), r, &ctx)) {
            PyObject *o = PyLong_FromSsize_t(i);
            int rc = o ? PyList_Append(slow, o) : -1;
            Py_XDECREF(o);
            if (rc < 0)
                goto fail;
            continue;
        }
        Key k;
        int is_new;
        Py_ssize_t code;
        PyObject *o;

        k.a = r->agent_id;
        k.b = r->environment;
        k.c = r->version;
        k.arm = r->arm;
        if ((code = table_code(&rt, &k, &is_new)) < 0)
            goto fail;
        if (is_new) {
            if (!(o = make_route(r)) || PyList_Append(routes, o) < 0) {
                Py_XDECREF(o);
                goto fail;
            }
            Py_DECREF(o);
        }
        rcode[nfast] = code;

        if ((scode[nfast] = intern_map(&st, &r->segment_raw, r->seg_k, r->seg_v, r->seg_n, segs)) < 0 ||
            (fcode[nfast] = intern_map(&ft, &r->flags_raw, r->flag_k, r->flag_v, r->flag_n, flags)) < 0)
            goto fail;

        if (!(eids[nfast] = make_str(&r->event_id)) || !(cids[nfast] = make_str(&r->conversation_id)))
            goto fail_row;
        if (r->trace_id.n) {
            if (!(tids[nfast] = make_str(&r->trace_id)))
                goto fail_row;
            ntrace++;
        }
        idx[nfast] = i;
        ts[nfast] = r->ts;
        lat[nfast] = r->latency;
        q[nfast] = r->quality;
        turn[nfast] = r->turn;
        bits[nfast] = r->bits;
        nfast++;
    }

    {
        PyObject *tid_list = Py_None;
        Py_INCREF(Py_None);
        if (ntrace) { /* rows without one: None */
            for (Py_ssize_t j = 0; j < nfast; j++)
                if (!tids[j]) {
                    Py_INCREF(Py_None);
                    tids[j] = Py_None;
                }
            Py_DECREF(Py_None);
            if (!(tid_list = list_of(tids, nfast)))
                goto fail;
        }
        PyObject *eid_list = list_of(eids, nfast);
        PyObject *cid_list = eid_list ? list_of(cids, nfast) : NULL;
        if (!cid_list) {
            Py_XDECREF(eid_list); /* frees the event ids it took; cids[] still owns the rest */
            Py_DECREF(tid_list);
            goto fail;
        }
        result = Py_BuildValue("(NONNNNNNNNONONON)", bytes_of(idx, nfast, 8), slow, bytes_of(ts, nfast, 8),
                               bytes_of(lat, nfast, 8), bytes_of(q, nfast, 8), bytes_of(bits, nfast, 1),
                               bytes_of(turn, nfast, 8), eid_list, cid_list, bytes_of(rcode, nfast, 8), routes,
                               bytes_of(scode, nfast, 8), segs, bytes_of(fcode, nfast, 8), flags, tid_list);
        nfast = 0; /* "N" stole the lists (or freed them if the tuple failed) */
    }
    goto done;

nomem:
    PyErr_NoMemory();
    goto fail;
fail_row:
    Py_CLEAR(eids[nfast]);
    Py_CLEAR(cids[nfast]);
    Py_CLEAR(tids[nfast]);
fail:
    result = NULL;
done:
    for (Py_ssize_t j = 0; j < nfast; j++) {
        Py_XDECREF(eids[j]);
        Py_XDECREF(cids[j]);
        Py_XDECREF(tids[j]);
    }
    if (tables >= 1) table_free(&rt);
    if (tables >= 2) table_free(&st);
    if (tables >= 3) table_free(&ft);
    Py_XDECREF(slow);
    Py_XDECREF(routes);
    Py_XDECREF(segs);
    Py_XDECREF(flags);
    for (int c = 0; c < N_COLS8; c++)
        PyMem_Free(cols[c]);
    PyMem_Free(eids);
    PyMem_Free(cids);
    PyMem_Free(tids);
    PyMem_Free(bits);
    PyMem_Free(r);
    Py_DECREF(items);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "watcher._turnscan",
    .m_doc = "Optional C accelerator: watcher.turn/v1 JSON messages straight into columns (see scan).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__turnscan(void)
{
    init_tables();
    init_key_masks();
    if (!PROD_STR && !(PROD_STR = PyUnicode_InternFromString("prod")))
        return NULL;
    for (int a = 1; a < 5; a++)
        if (!ARM_STR[a] && !(ARM_STR[a] = PyUnicode_InternFromString(ARM_NAMES[a])))
            return NULL;
    return PyModule_Create(&module);
}
