/*
 * watcher.contract._otlpscan: OTLP/protobuf trace requests straight into watcher.turn/v1 messages.
 *
 * An optional accelerator for watcher.contract.otlp. The official generated classes turn every
 * attribute of every span into Python objects (~35 us a turn); this walks the protobuf wire format
 * of an ExportTraceServiceRequest once, decides from a span's name and gen_ai.operation.name whether
 * it is a turn (every other span costs that test and nothing more), and writes each turn span as the
 * JSON turn message the Python rules of watcher/contract/otlp_mapping.py write (map_span), or the
 * same rejection (reason and detail). tests/contract/test_otlpscan.py holds the two to each other on
 * generated and mutated requests.
 *
 *   compile(*plan_args(mapping)) -> capsule    the mapping, with its attribute keys hashed
 *   read(plan, raw) -> (turns, rejected, spans) turns: [bytes]; rejected: [(reason, detail, span)]
 *   sniff(values) -> [(index, "otlp_proto" | "otlp_json")]   which messages are OTLP requests
 *
 * read raises ValueError for a request that is not valid protobuf (a truncated field, a varint of
 * more than ten bytes, a group or an invalid wire type). It checks only what it reads: a request the
 * official parser refuses for a reason in a part no turn reads (say, invalid UTF-8 in a tool span's
 * attribute) may still give turns here; any string it writes into a turn is checked (UTF-8, escaped).
 *
 * Memory safety: every read is bounded by the end of the enclosing length-delimited field, checked
 * before the bytes are touched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- protobuf wire format -------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} Buf;

typedef struct {
    uint32_t num;
    int wt;
    uint64_t v;       /* varint, fixed64 or fixed32 value */
    const uint8_t *p; /* length-delimited payload */
    size_t n;
} Field;

#if defined(__GNUC__)
#define HOT static inline __attribute__((always_inline))
#else
#define HOT static inline
#endif

HOT int read_varint(Buf *b, uint64_t *out)
{
    if (b->p < b->end && *b->p < 0x80) { /* the usual tag or length: one byte */
        *out = *b->p++;
        return 0;
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (b->p >= b->end)
            return -1;
        uint8_t c = *b->p++;
        if (shift == 63 && c > 1)
            return -1; /* more than 64 bits */
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* 1: a field, 0: the end of the buffer, -1: malformed */
HOT int next_field(Buf *b, Field *f)
{
    if (b->p >= b->end)
        return 0;
    f->p = NULL; /* set only for a length-delimited field, read only then (quiets -Wmaybe-uninitialized) */
    f->n = 0;
    f->v = 0;
    uint64_t tag;
    if (read_varint(b, &tag) < 0)
        return -1;
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF)
        return -1;
    f->num = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    switch (f->wt) {
    case 0:
        return read_varint(b, &f->v) < 0 ? -1 : 1;
    case 1:
        if (b->end - b->p < 8)
            return -1;
        memcpy(&f->v, b->p, 8); /* little-endian on the wire; every platform CPython builds on here */
        b->p += 8;
        return 1;
    case 2: {
        uint64_t len;
        if (read_varint(b, &len) < 0 || len > (uint64_t)(b->end - b->p))
            return -1;
        f->p = b->p;
        f->n = (size_t)len;
        b->p += len;
        return 1;
    }
    case 5:
        if (b->end - b->p < 4) {
            return -1;
        }
        {
            uint32_t v32;
            memcpy(&v32, b->p, 4);
            f->v = v32;
        }
        b->p += 4;
        return 1;
    default:
        return -1; /* groups (3, 4) and the invalid wire types 6 and 7 */
    }
}

/* ---- AnyValue -------------------------------------------------------------------------------- */

enum { V_NONE, V_STR, V_BOOL, V_INT, V_DOUBLE, V_BYTES, V_ARRAY, V_KVLIST, V_INDEX };

typedef struct {
    int t;
    const uint8_t *p;
    size_t n;
    int64_t i;
    double d;
} Val;

static const char *const KIND[] = {"none", "a string", "a boolean", "an integer", "a double",
                                   "bytes", "an array", "a key-value list", "none"};

/* Merges one encoded AnyValue into *v (a repeated message field merges; the last oneof member set
   wins). A member with another wire type than its own is an unknown field, as protobuf reads it. */
static int read_any(const uint8_t *p, size_t n, Val *v)
{
    Buf b = {p, p + n};
    Field f;
    int r;
    while ((r = next_field(&b, &f)) > 0) {
        switch (f.num) {
        case 1:
        case 5:
        case 6:
        case 7:
            if (f.wt != 2)
                break;
            v->t = f.num == 1 ? V_STR : f.num == 5 ? V_ARRAY : f.num == 6 ? V_KVLIST : V_BYTES;
            v->p = f.p;
            v->n = f.n;
            break;
        case 2:
            if (f.wt == 0) {
                v->t = V_BOOL;
                v->i = f.v != 0;
            }
            break;
        case 3:
            if (f.wt == 0) {
                v->t = V_INT;
                v->i = (int64_t)f.v;
            }
            break;
        case 4:
            if (f.wt == 1) {
                v->t = V_DOUBLE;
                memcpy(&v->d, &f.v, 8);
            }
            break;
        case 8:
            if (f.wt == 0)
                v->t = V_INDEX;
            break;
        default:
            break;
        }
    }
    return r;
}

/* What Python treats as present: not empty, not "", not a string-table index. */
static int present(const Val *v)
{
    return v->t != V_NONE && v->t != V_INDEX && !(v->t == V_STR && v->n == 0);
}

/* ---- the compiled mapping -------------------------------------------------------------------- */

enum {
    F_AGENT, F_ENV, F_VERSION, F_ARM, F_CONV, F_TURN, F_LATENCY, F_QUALITY, F_ESCALATED, F_ERROR,
    F_COMPLIANCE, F_TOKENS_IN, F_TOKENS_OUT, F_COST, N_FIELDS
};
static const char *const FIELD_NAME[N_FIELDS] = {
    "agent_id", "environment", "version", "arm", "conversation_id", "turn", "latency_ms", "quality",
    "escalated", "error", "compliance_violation", "tokens_in", "tokens_out", "cost_usd"};

#define TABLE 256 /* open addressing, power of two, more than twice the keys */
#define MAX_KEYS 120

typedef struct {
    const char *p;
    Py_ssize_t n;
} Str;

typedef struct {
    PyObject *keep;        /* a tuple of the bytes objects the Str below point into */
    Str keys[MAX_KEYS];    /* every attribute key the mapping reads */
    int n_keys;
    int16_t table[TABLE];  /* hash -> key index + 1 (0: empty) */
    int *field_keys[N_FIELDS];
    int field_n[N_FIELDS];
    int key_op, key_turn_attr; /* gen_ai.operation.name, turn_attribute (-1: none) */
    Str *ops, *names;
    int n_ops, n_names;
    Str prefix;                /* segment_prefix (n 0: none) */
    Str *seg_names;            /* explicit segments: name -> key index */
    int *seg_keys;
    int n_segs;
    Str evaluation;            /* quality_evaluation (p NULL: the first evaluation event) */
    double lo, hi;
    int storage[MAX_KEYS * 2];
    int used;
    void *work; /* read()'s scratch (a Work), made on first use and kept: read() runs under the GIL */
} Plan;

/* A cheap hash of a key: its length and its first and last eight bytes (attribute keys differ there;
   equal hashes are told apart by memcmp). */
static uint32_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
    } else {
        memcpy(&a, p, n);
    }
    uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ull) ^ (uint64_t)n) * 0xFF51AFD7ED558CCDull;
    return (uint32_t)(h >> 32);
}

static int key_index(const Plan *pl, const uint8_t *p, size_t n)
{
    uint32_t h = hash_bytes(p, n) & (TABLE - 1);
    for (;;) {
        int k = pl->table[h] - 1;
        if (k < 0)
            return -1;
        if ((size_t)pl->keys[k].n == n && memcmp(pl->keys[k].p, p, n) == 0)
            return k;
        h = (h + 1) & (TABLE - 1);
    }
}

/* The index of key `s` (a str), added if new; -1 with an exception set on failure. */
static int add_key(Plan *pl, PyObject *s, PyObject *keep)
{
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "attribute keys must be str");
        return -1;
    }
    PyObject *b = PyUnicode_AsUTF8String(s);
    if (!b)
        return -1;
    if (PyList_Append(keep, b) < 0) {
        Py_DECREF(b);
        return -1;
    }
    Py_DECREF(b);
    const char *p = PyBytes_AS_STRING(b);
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    int k = key_index(pl, (const uint8_t *)p, (size_t)n);
    if (k >= 0)
        return k;
    if (pl->n_keys >= MAX_KEYS) {
        PyErr_SetString(PyExc_ValueError, "the OTLP mapping reads too many attribute keys for the C decoder");
        return -1;
    }
    k = pl->n_keys++;
    pl->keys[k].p = p;
    pl->keys[k].n = n;
    uint32_t h = hash_bytes((const uint8_t *)p, (size_t)n) & (TABLE - 1);
    while (pl->table[h])
        h = (h + 1) & (TABLE - 1);
    pl->table[h] = (int16_t)(k + 1);
    return k;
}

static int to_str(PyObject *s, Str *out, PyObject *keep)
{
    PyObject *b = PyUnicode_AsUTF8String(s);
    if (!b)
        return -1;
    if (PyList_Append(keep, b) < 0) {
        Py_DECREF(b);
        return -1;
    }
    Py_DECREF(b);
    out->p = PyBytes_AS_STRING(b);
    out->n = PyBytes_GET_SIZE(b);
    return 0;
}

static Str *str_array(PyObject *tuple, int *n, PyObject *keep)
{
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "expected a tuple of str");
        return NULL;
    }
    *n = (int)PyTuple_GET_SIZE(tuple);
    Str *out = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof(Str));
    if (!out) {
        PyErr_NoMemory();
        return NULL;
    }
    for (int i = 0; i < *n; i++)
        if (to_str(PyTuple_GET_ITEM(tuple, i), &out[i], keep) < 0) {
            PyMem_Free(out);
            return NULL;
        }
    return out;
}

static void plan_free(PyObject *capsule)
{
    Plan *pl = PyCapsule_GetPointer(capsule, "watcher.otlp.plan");
    if (!pl)
        return;
    Py_XDECREF(pl->keep);
    PyMem_Free(pl->ops);
    PyMem_Free(pl->names);
    PyMem_Free(pl->seg_names);
    PyMem_Free(pl->seg_keys);
    PyMem_Free(pl->work);
    PyMem_Free(pl);
}

/* Field arguments of compile(), in the order of watcher.contract.otlp.plan_args */
static const int FIELD_ARG[N_FIELDS] = {3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 18, 19, 20};

static PyObject *compile_plan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 21) {
        PyErr_SetString(PyExc_TypeError, "compile() takes the 21 values of plan_args(mapping)");
        return NULL;
    }
    Plan *pl = PyMem_Calloc(1, sizeof(Plan));
    if (!pl)
        return PyErr_NoMemory();
    PyObject *keep = PyList_New(0);
    if (!keep) {
        PyMem_Free(pl);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(pl, "watcher.otlp.plan", plan_free);
    if (!capsule) {
        Py_DECREF(keep);
        PyMem_Free(pl);
        return NULL;
    }
    pl->keep = keep;
    pl->key_turn_attr = -1;
    if (!(pl->ops = str_array(args[0], &pl->n_ops, keep)) || !(pl->names = str_array(args[1], &pl->n_names, keep)))
        goto fail;
    PyObject *op = PyUnicode_FromString("gen_ai.operation.name");
    if (!op)
        goto fail;
    pl->key_op = add_key(pl, op, keep);
    Py_DECREF(op);
    if (pl->key_op < 0)
        goto fail;
    if (args[2] != Py_None && (pl->key_turn_attr = add_key(pl, args[2], keep)) < 0)
        goto fail;
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *t = args[FIELD_ARG[f]];
        if (!PyTuple_Check(t)) {
            PyErr_Format(PyExc_TypeError, "%s: expected a tuple of str", FIELD_NAME[f]);
            goto fail;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(t);
        if (pl->used + n > MAX_KEYS * 2) {
            PyErr_SetString(PyExc_ValueError, "the OTLP mapping lists too many attribute keys for the C decoder");
            goto fail;
        }
        pl->field_keys[f] = pl->storage + pl->used;
        pl->field_n[f] = (int)n;
        for (Py_ssize_t i = 0; i < n; i++) {
            int k = add_key(pl, PyTuple_GET_ITEM(t, i), keep);
            if (k < 0)
                goto fail;
            pl->storage[pl->used++] = k;
        }
    }
    if (args[9] != Py_None && to_str(args[9], &pl->prefix, keep) < 0)
        goto fail;
    PyObject *segs = args[10];
    if (!PyTuple_Check(segs)) {
        PyErr_SetString(PyExc_TypeError, "segments: expected a tuple of (name, key)");
        goto fail;
    }
    pl->n_segs = (int)PyTuple_GET_SIZE(segs);
    pl->seg_names = PyMem_Calloc((size_t)pl->n_segs + 1, sizeof(Str));
    pl->seg_keys = PyMem_Calloc((size_t)pl->n_segs + 1, sizeof(int));
    if (!pl->seg_names || !pl->seg_keys) {
        PyErr_NoMemory();
        goto fail;
    }
    for (int i = 0; i < pl->n_segs; i++) {
        PyObject *pair = PyTuple_GET_ITEM(segs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "segments: expected (name, key) pairs");
            goto fail;
        }
        if (to_str(PyTuple_GET_ITEM(pair, 0), &pl->seg_names[i], keep) < 0 ||
            (pl->seg_keys[i] = add_key(pl, PyTuple_GET_ITEM(pair, 1), keep)) < 0)
            goto fail;
    }
    if (args[13] != Py_None && to_str(args[13], &pl->evaluation, keep) < 0)
        goto fail;
    PyObject *range = args[14];
    if (!PyTuple_Check(range) || PyTuple_GET_SIZE(range) != 2) {
        PyErr_SetString(PyExc_TypeError, "quality_range: expected (low, high)");
        goto fail;
    }
    pl->lo = PyFloat_AsDouble(PyTuple_GET_ITEM(range, 0));
    pl->hi = PyFloat_AsDouble(PyTuple_GET_ITEM(range, 1));
    if (PyErr_Occurred())
        goto fail;
    return capsule;
fail:
    Py_DECREF(capsule);
    return NULL;
}

/* ---- output buffer --------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} Out;

static int out_grow(Out *o, size_t more)
{
    if (o->n + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 512;
    while (cap < o->n + more)
        cap *= 2;
    char *p = PyMem_Realloc(o->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = p;
    o->cap = cap;
    return 0;
}

static int out_raw(Out *o, const char *s, size_t n)
{
    if (out_grow(o, n) < 0)
        return -1;
    memcpy(o->p + o->n, s, n);
    o->n += n;
    return 0;
}

#define OUT_LIT(o, s) out_raw((o), (s), sizeof(s) - 1)

static int valid_utf8(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t j = 1; j < len; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* A JSON string; the bytes are valid UTF-8 (checked by the caller). */
static int out_string(Out *o, const uint8_t *p, size_t n)
{
    if (out_grow(o, n * 6 + 2) < 0)
        return -1;
    char *w = o->p + o->n;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(w, "\\u00", 4);
            w[4] = hex[c >> 4];
            w[5] = hex[c & 15];
            w += 6;
        } else {
            *w++ = (char)c;
        }
    }
    *w++ = '"';
    o->n = (size_t)(w - o->p);
    return 0;
}

/* an integer in decimal, optionally quoted (a JSON string) */
static int out_int(Out *o, int64_t v, int quoted)
{
    char tmp[24];
    char *w = tmp + sizeof tmp;
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--w = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0)
        *--w = '-';
    size_t n = (size_t)(tmp + sizeof tmp - w);
    if (out_grow(o, n + 2) < 0)
        return -1;
    if (quoted)
        o->p[o->n++] = '"';
    memcpy(o->p + o->n, w, n);
    o->n += n;
    if (quoted)
        o->p[o->n++] = '"';
    return 0;
}

/* repr(float): the shortest text that reads back as the same double */
static int out_double(Out *o, double d)
{
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s)
        return -1;
    int r = out_raw(o, s, strlen(s));
    PyMem_Free(s);
    return r;
}

/* ---- one turn span --------------------------------------------------------------------------- */

typedef struct {
    Val v;
    uint32_t gen;
} Slot;

typedef struct {
    const uint8_t *k; /* key after the prefix */
    size_t kn;
    Val v;
} Pair;

#define PAIRS_MAX 256 /* prefix attributes kept per scope; more is a mapping problem (reported) */

typedef struct {
    Pair span[PAIRS_MAX], res[PAIRS_MAX], seg[PAIRS_MAX * 2 + 64], flags[PAIRS_MAX];
    int n_span, n_res, n_seg, n_flags;
    Slot span_slots[MAX_KEYS], res_slots[MAX_KEYS];
    uint32_t span_gen, res_gen;
} Work;

typedef struct {
    int reason; /* index in REASONS */
    char detail[512];
} Problem;

enum { R_MISSING, R_WRONG_TYPE, R_OUT_OF_RANGE, R_NOT_FINITE, R_INVALID };
static const char *const REASONS[] = {"missing_field", "wrong_type", "out_of_range", "not_finite", "invalid_value"};

/* A key, last value wins, in first-seen order (a Python dict's behaviour). */
static int put_pair(Pair *arr, int *n, int cap, const uint8_t *k, size_t kn, const Val *v)
{
    for (int i = 0; i < *n; i++)
        if (arr[i].kn == kn && memcmp(arr[i].k, k, kn) == 0) {
            arr[i].v = *v;
            return 0;
        }
    if (*n >= cap)
        return -1;
    arr[*n].k = k;
    arr[*n].kn = kn;
    arr[*n].v = *v;
    (*n)++;
    return 0;
}

/* A KeyValue's key (the last one, if repeated) */
static int kv_key(const uint8_t *p, size_t n, const uint8_t **key, size_t *kn)
{
    /* the usual encoding, one key (field 1) then at most one value (field 2) to the end: no walk */
    if (n >= 2 && p[0] == 0x0A && p[1] < 0x80 && (size_t)p[1] + 2 <= n) {
        size_t at = 2 + (size_t)p[1];
        if (at == n || (at + 2 <= n && p[at] == 0x12 && p[at + 1] < 0x80 && at + 2 + p[at + 1] == n)) {
            *key = p + 2;
            *kn = p[1];
            return 0;
        }
    }
    Buf b = {p, p + n};
    Field f;
    int r;
    *key = (const uint8_t *)"";
    *kn = 0;
    while ((r = next_field(&b, &f)) > 0)
        if (f.num == 1 && f.wt == 2) {
            *key = f.p;
            *kn = f.n;
        }
    return r;
}

/* A KeyValue's value (every occurrence merged, as protobuf does) */
static int kv_value(const uint8_t *p, size_t n, Val *v)
{
    Buf b = {p, p + n};
    Field f;
    int r;
    while ((r = next_field(&b, &f)) > 0)
        if (f.num == 2 && f.wt == 2 && read_any(f.p, f.n, v) < 0)
            return -1;
    return r;
}

/* One KeyValue into the slots of the keys the mapping reads (and the prefix pairs); the value of
   any other key is not read. */
static int read_kv(const Plan *pl, const uint8_t *p, size_t n, Slot *slots, uint32_t gen, Pair *pairs, int *n_pairs,
                   int *overflow)
{
    const uint8_t *key;
    size_t kn;
    if (kv_key(p, n, &key, &kn) < 0)
        return -1;
    int k = key_index(pl, key, kn);
    int prefixed = pl->prefix.n && kn > (size_t)pl->prefix.n && memcmp(key, pl->prefix.p, (size_t)pl->prefix.n) == 0;
    if (k < 0 && !prefixed)
        return 0;
    Val v = {V_NONE, NULL, 0, 0, 0.0};
    if (kv_value(p, n, &v) < 0)
        return -1;
    if (k >= 0) {
        slots[k].v = v;
        slots[k].gen = gen;
    }
    if (prefixed && put_pair(pairs, n_pairs, PAIRS_MAX, key + pl->prefix.n, kn - (size_t)pl->prefix.n, &v) < 0)
        *overflow = 1;
    return 0;
}

typedef struct {
    const uint8_t *key; /* the attribute key the value came from */
    size_t kn;
    const Val *v;
} Found;

static int lookup(const Plan *pl, Work *w, const int *keys, int n, Found *out)
{
    for (int i = 0; i < n; i++) {
        int k = keys[i];
        const Slot *s = &w->span_slots[k];
        if (s->gen == w->span_gen && present(&s->v)) {
            out->key = (const uint8_t *)pl->keys[k].p;
            out->kn = (size_t)pl->keys[k].n;
            out->v = &s->v;
            return 1;
        }
        s = &w->res_slots[k];
        if (s->gen == w->res_gen && present(&s->v)) {
            out->key = (const uint8_t *)pl->keys[k].p;
            out->kn = (size_t)pl->keys[k].n;
            out->v = &s->v;
            return 1;
        }
    }
    return 0;
}

static int problem(Problem *pr, int reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pr->reason = reason;
    vsnprintf(pr->detail, sizeof pr->detail, fmt, ap);
    va_end(ap);
    return 1;
}

static int wrong_type(Problem *pr, const Found *fd, const char *field, const char *expected)
{
    return problem(pr, R_WRONG_TYPE, "%.*s (%s): expected %s, got %s", (int)fd->kn, fd->key, field, expected,
                   KIND[fd->v->t]);
}

/* A string field: str as is, an integer in decimal. Returns 1 with a problem, -1 on error. */
static int emit_text(Out *o, Problem *pr, const Found *fd, const char *field)
{
    const Val *v = fd->v;
    if (v->t == V_STR) {
        if (!valid_utf8(v->p, v->n))
            return problem(pr, R_INVALID, "%.*s (%s): not valid UTF-8", (int)fd->kn, fd->key, field);
        return out_string(o, v->p, v->n) < 0 ? -1 : 0;
    }
    if (v->t == V_INT)
        return out_int(o, v->i, 1) < 0 ? -1 : 0;
    return wrong_type(pr, fd, field, "a string");
}

/* A number field: a double or an integer, finite. */
static int number(Problem *pr, const Found *fd, const char *field, double *out)
{
    const Val *v = fd->v;
    if (v->t == V_DOUBLE)
        *out = v->d;
    else if (v->t == V_INT)
        *out = (double)v->i;
    else
        return wrong_type(pr, fd, field, "a number");
    if (!isfinite(*out)) {
        char *s = PyOS_double_to_string(*out, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (!s)
            return -1;
        problem(pr, R_NOT_FINITE, "%.*s (%s): not a finite number (%s)", (int)fd->kn, fd->key, field, s);
        PyMem_Free(s);
        return 1;
    }
    return 0;
}

static int required(const Plan *pl, Work *w, Out *o, Problem *pr, int f)
{
    Found fd;
    if (!lookup(pl, w, pl->field_keys[f], pl->field_n[f], &fd)) {
        char keys[400];
        size_t at = 0;
        for (int i = 0; i < pl->field_n[f] && at < sizeof keys - 1; i++) {
            const Str *k = &pl->keys[pl->field_keys[f][i]];
            int wrote = snprintf(keys + at, sizeof keys - at, "%s%.*s", i ? ", " : "", (int)k->n, k->p);
            at += wrote > 0 ? (size_t)wrote : 0;
        }
        if (at >= sizeof keys)
            at = sizeof keys - 1;
        keys[at] = 0;
        return problem(pr, R_MISSING, "no %s: none of %s is set on the span or its resource", FIELD_NAME[f], keys);
    }
    return emit_text(o, pr, &fd, FIELD_NAME[f]);
}

#define TRY(x)                \
    do {                      \
        int _r = (x);         \
        if (_r)               \
            return _r;        \
    } while (0)

typedef struct {
    const uint8_t *span_id, *name, *trace_id;
    size_t span_id_n, name_n, trace_id_n;
    uint64_t start, end;
    int status;
    Val quality_event; /* the first evaluation event's score, if any */
    int has_quality_event;
} SpanInfo;

/* Howard Hinnant's civil_from_days: the proleptic Gregorian date of a day count since 1970-01-01 */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put_digits(char *w, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        w[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" of microseconds since the epoch (a fixed64 time is never negative) */
static int emit_rfc3339(Out *o, uint64_t us)
{
    uint64_t secs = us / 1000000u, day = secs / 86400u, rem = secs % 86400u;
    int64_t y;
    unsigned m, d;
    civil_from_days((int64_t)day, &y, &m, &d);
    /* a fixed64 of nanoseconds ends in the year 2554: always four digits */
    char t[29];
    t[0] = '"';
    put_digits(t + 1, (uint64_t)y, 4);
    t[5] = '-';
    put_digits(t + 6, m, 2);
    t[8] = '-';
    put_digits(t + 9, d, 2);
    t[11] = 'T';
    put_digits(t + 12, rem / 3600u, 2);
    t[14] = ':';
    put_digits(t + 15, rem % 3600u / 60u, 2);
    t[17] = ':';
    put_digits(t + 18, rem % 60u, 2);
    t[20] = '.';
    put_digits(t + 21, us % 1000000u, 6);
    t[27] = 'Z';
    t[28] = '"';
    return out_raw(o, t, sizeof t);
}

/* magnitude / unit as an exact decimal with `digits` decimals (unit = 10**digits) */
static int emit_decimal(Out *o, int negative, uint64_t magnitude, uint64_t unit, int digits)
{
    char tmp[48];
    char *w = tmp + sizeof tmp;
    uint64_t frac = magnitude % unit, whole = magnitude / unit;
    for (int i = 0; i < digits; i++) {
        *--w = (char)('0' + frac % 10);
        frac /= 10;
    }
    *--w = '.';
    do {
        *--w = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    if (negative)
        *--w = '-';
    return out_raw(o, w, (size_t)(tmp + sizeof tmp - w));
}

static void segment_put(Work *w, const uint8_t *k, size_t kn, const Val *v)
{
    put_pair(w->seg, &w->n_seg, (int)(sizeof w->seg / sizeof w->seg[0]), k, kn, v);
}

/* The turn's JSON (after event_id and ts), in the order and with the checks of map_span. */
static int map_fields(const Plan *pl, Work *w, SpanInfo *si, Out *o, Problem *pr)
{
    Found fd;
    if (OUT_LIT(o, ",\"agent_id\":") < 0)
        return -1;
    TRY(required(pl, w, o, pr, F_AGENT));
    if (lookup(pl, w, pl->field_keys[F_ENV], pl->field_n[F_ENV], &fd)) {
        if (OUT_LIT(o, ",\"environment\":") < 0)
            return -1;
        TRY(emit_text(o, pr, &fd, "environment"));
    }
    if (OUT_LIT(o, ",\"version\":") < 0)
        return -1;
    TRY(required(pl, w, o, pr, F_VERSION));
    if (lookup(pl, w, pl->field_keys[F_ARM], pl->field_n[F_ARM], &fd)) {
        if (OUT_LIT(o, ",\"arm\":") < 0)
            return -1;
        TRY(emit_text(o, pr, &fd, "arm"));
    }
    if (OUT_LIT(o, ",\"conversation_id\":") < 0)
        return -1;
    TRY(required(pl, w, o, pr, F_CONV));
    if (lookup(pl, w, pl->field_keys[F_TURN], pl->field_n[F_TURN], &fd)) {
        if (fd.v->t != V_INT)
            return wrong_type(pr, &fd, "turn", "an integer");
        if (OUT_LIT(o, ",\"turn\":") < 0 || out_int(o, fd.v->i, 0) < 0)
            return -1;
    }
    /* segment: the resource's prefix attributes, then the span's (which win), then the explicit
       ones; each value is checked as it is put, in that order (as map_span does) */
    w->n_seg = 0;
    for (int scope = 0; scope < 2; scope++) {
        const Pair *pairs = scope ? w->span : w->res;
        int n_pairs = scope ? w->n_span : w->n_res;
        for (int i = 0; i < n_pairs; i++) {
            if (!present(&pairs[i].v))
                continue;
            if (pairs[i].v.t != V_STR && pairs[i].v.t != V_INT) {
                char key[300];
                int kn = snprintf(key, sizeof key, "%.*s%.*s", (int)pl->prefix.n, pl->prefix.p, (int)pairs[i].kn,
                                  (const char *)pairs[i].k);
                Found pf = {(const uint8_t *)key, (size_t)(kn < (int)sizeof key ? kn : (int)sizeof key - 1),
                            &pairs[i].v};
                return wrong_type(pr, &pf, "segment", "a string");
            }
            segment_put(w, pairs[i].k, pairs[i].kn, &pairs[i].v);
        }
    }
    for (int i = 0; i < pl->n_segs; i++) {
        if (lookup(pl, w, &pl->seg_keys[i], 1, &fd)) {
            if (fd.v->t != V_STR && fd.v->t != V_INT)
                return wrong_type(pr, &fd, "segment", "a string");
            segment_put(w, (const uint8_t *)pl->seg_names[i].p, (size_t)pl->seg_names[i].n, fd.v);
        }
    }
    if (w->n_seg) {
        if (OUT_LIT(o, ",\"segment\":{") < 0)
            return -1;
        for (int i = 0; i < w->n_seg; i++) {
            Found sf = {w->seg[i].k, w->seg[i].kn, &w->seg[i].v};
            if (!valid_utf8(sf.key, sf.kn))
                return problem(pr, R_INVALID, "segment key: not valid UTF-8");
            if ((i && OUT_LIT(o, ",") < 0) || out_string(o, sf.key, sf.kn) < 0 || OUT_LIT(o, ":") < 0)
                return -1;
            TRY(emit_text(o, pr, &sf, "segment"));
        }
        if (OUT_LIT(o, "}") < 0)
            return -1;
    }
    if (OUT_LIT(o, ",\"latency_ms\":") < 0)
        return -1;
    if (lookup(pl, w, pl->field_keys[F_LATENCY], pl->field_n[F_LATENCY], &fd)) {
        double d;
        TRY(number(pr, &fd, "latency_ms", &d));
        if (out_double(o, d) < 0)
            return -1;
    } else {
        uint64_t end = si->end ? si->end : si->start;
        int neg = end < si->start;
        if (emit_decimal(o, neg, neg ? si->start - end : end - si->start, 1000000u, 6) < 0)
            return -1;
    }
    int have_q = lookup(pl, w, pl->field_keys[F_QUALITY], pl->field_n[F_QUALITY], &fd);
    if (!have_q && si->has_quality_event) {
        fd.key = (const uint8_t *)"gen_ai.evaluation.score.value";
        fd.kn = strlen((const char *)fd.key);
        fd.v = &si->quality_event;
        have_q = 1;
    }
    if (have_q) {
        double q;
        TRY(number(pr, &fd, "quality", &q));
        if (!(pl->lo <= q && q <= pl->hi)) {
            char *s = PyOS_double_to_string(q, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (!s)
                return -1;
            problem(pr, R_OUT_OF_RANGE, "%.*s (quality): %s is outside quality_range [%g, %g]", (int)fd.kn, fd.key, s,
                    pl->lo, pl->hi);
            PyMem_Free(s);
            return 1;
        }
        if (!(pl->lo == 0.0 && pl->hi == 1.0))
            q = (q - pl->lo) / (pl->hi - pl->lo);
        if (OUT_LIT(o, ",\"quality\":") < 0 || out_double(o, q) < 0)
            return -1;
    }
    if (lookup(pl, w, pl->field_keys[F_ESCALATED], pl->field_n[F_ESCALATED], &fd)) {
        if (fd.v->t != V_BOOL)
            return wrong_type(pr, &fd, "escalated", "a boolean");
        if (fd.v->i && OUT_LIT(o, ",\"escalated\":true") < 0)
            return -1;
    }
    int error = si->status == 2;
    if (!error && lookup(pl, w, pl->field_keys[F_ERROR], pl->field_n[F_ERROR], &fd))
        error = !(fd.v->t == V_BOOL && !fd.v->i);
    if (error && OUT_LIT(o, ",\"error\":true") < 0)
        return -1;
    if (lookup(pl, w, pl->field_keys[F_COMPLIANCE], pl->field_n[F_COMPLIANCE], &fd)) {
        if (fd.v->t != V_BOOL)
            return wrong_type(pr, &fd, "compliance_violation", "a boolean");
        if (fd.v->i && OUT_LIT(o, ",\"compliance_violation\":true") < 0)
            return -1;
    }
    if (w->n_flags) {
        if (OUT_LIT(o, ",\"flags\":{") < 0)
            return -1;
        for (int i = 0; i < w->n_flags; i++) {
            const Val *v = &w->flags[i].v;
            if ((i && OUT_LIT(o, ",") < 0) || out_string(o, w->flags[i].k, w->flags[i].kn) < 0 || OUT_LIT(o, ":") < 0)
                return -1;
            int r = v->t == V_STR    ? out_string(o, v->p, v->n)
                    : v->t == V_BOOL ? (v->i ? OUT_LIT(o, "\"true\"") : OUT_LIT(o, "\"false\""))
                                     : out_int(o, v->i, 1);
            if (r < 0)
                return -1;
        }
        if (OUT_LIT(o, "}") < 0)
            return -1;
    }
    static const char *const TOKENS[2] = {",\"tokens_in\":", ",\"tokens_out\":"};
    for (int t = 0; t < 2; t++) {
        int f = t ? F_TOKENS_OUT : F_TOKENS_IN;
        if (lookup(pl, w, pl->field_keys[f], pl->field_n[f], &fd)) {
            if (fd.v->t != V_INT)
                return wrong_type(pr, &fd, FIELD_NAME[f], "an integer");
            if (out_raw(o, TOKENS[t], strlen(TOKENS[t])) < 0 || out_int(o, fd.v->i, 0) < 0)
                return -1;
        }
    }
    if (lookup(pl, w, pl->field_keys[F_COST], pl->field_n[F_COST], &fd)) {
        double d;
        TRY(number(pr, &fd, "cost_usd", &d));
        if (OUT_LIT(o, ",\"cost_usd\":") < 0 || out_double(o, d) < 0)
            return -1;
    }
    return OUT_LIT(o, "}") < 0 ? -1 : 0;
}

/* ---- events ---------------------------------------------------------------------------------- */

static const char EVAL_EVENT[] = "gen_ai.evaluation.result";
static const char FLAG_EVENT[] = "feature_flag.evaluation";

static int eq(const uint8_t *p, size_t n, const char *lit, size_t ln)
{
    return n == ln && memcmp(p, lit, n) == 0;
}
#define EQ(p, n, lit) eq((p), (n), (lit), sizeof(lit) - 1)

/* One Event of a turn span: the evaluation score (the first qualifying event) or a flag. */
static int read_event(const Plan *pl, Work *w, SpanInfo *si, const uint8_t *p, size_t n)
{
    Buf b = {p, p + n};
    Field f;
    int r;
    const uint8_t *name = (const uint8_t *)"";
    size_t name_n = 0;
    while ((r = next_field(&b, &f)) > 0)
        if (f.num == 2 && f.wt == 2) {
            name = f.p;
            name_n = f.n;
        }
    if (r < 0)
        return -1;
    int is_eval = EQ(name, name_n, EVAL_EVENT), is_flag = EQ(name, name_n, FLAG_EVENT);
    if (!(is_eval && !si->has_quality_event) && !is_flag)
        return 0; /* only the first qualifying evaluation counts */
    /* the attributes of interest, last value wins */
    Val eval_name = {0}, score = {0}, fkey = {0}, variant = {0}, value = {0};
    b.p = p;
    while ((r = next_field(&b, &f)) > 0) {
        if (f.num != 3 || f.wt != 2)
            continue;
        Buf ab = {f.p, f.p + f.n};
        Field g;
        const uint8_t *key = (const uint8_t *)"";
        size_t kn = 0;
        Val v = {V_NONE, NULL, 0, 0, 0.0};
        while ((r = next_field(&ab, &g)) > 0) {
            if (g.num == 1 && g.wt == 2) {
                key = g.p;
                kn = g.n;
            } else if (g.num == 2 && g.wt == 2 && read_any(g.p, g.n, &v) < 0) {
                return -1;
            }
        }
        if (r < 0)
            return -1;
        if (EQ(key, kn, "gen_ai.evaluation.name"))
            eval_name = v;
        else if (EQ(key, kn, "gen_ai.evaluation.score.value"))
            score = v;
        else if (EQ(key, kn, "feature_flag.key"))
            fkey = v;
        else if (EQ(key, kn, "feature_flag.result.variant"))
            variant = v;
        else if (EQ(key, kn, "feature_flag.result.value"))
            value = v;
    }
    if (r < 0)
        return -1;
    if (is_eval) {
        if (pl->evaluation.p != NULL &&
            !(eval_name.t == V_STR && eq(eval_name.p, eval_name.n, pl->evaluation.p, (size_t)pl->evaluation.n)))
            return 0;
        if (score.t == V_NONE || score.t == V_INDEX)
            return 0;
        si->quality_event = score;
        si->has_quality_event = 1;
        return 0;
    }
    /* a flag evaluation: key -> its variant (else its value): a string, a boolean or an integer */
    if (fkey.t != V_STR || fkey.n == 0 || !valid_utf8(fkey.p, fkey.n))
        return 0;
    const Val *res = present(&variant) ? &variant : &value;
    if ((res->t == V_STR && res->n > 0 && valid_utf8(res->p, res->n)) || res->t == V_BOOL || res->t == V_INT)
        put_pair(w->flags, &w->n_flags, PAIRS_MAX, fkey.p, fkey.n, res);
    return 0;
}

/* ---- spans, scopes, resources, the request ----------------------------------------------------- */

typedef struct {
    const Plan *pl;
    Work *w;
    PyObject *turns, *rejected;
    Py_ssize_t spans;
    Out out;
    const uint8_t *res_p; /* the current ResourceSpans, read for its resource on the first turn span */
    size_t res_n;
    int res_read, res_overflow;
} Ctx;

static const char HEX[] = "0123456789abcdef";

static int read_resource(Ctx *c)
{
    Work *w = c->w;
    if (++w->res_gen == 0) { /* after 2^32 resources: no slot may look current by wrapping around */
        memset(w->res_slots, 0, sizeof w->res_slots);
        w->res_gen = 1;
    }
    w->n_res = 0;
    c->res_overflow = 0;
    Buf b = {c->res_p, c->res_p + c->res_n};
    Field f;
    int r;
    while ((r = next_field(&b, &f)) > 0) {
        if (f.num != 1 || f.wt != 2)
            continue;
        Buf rb = {f.p, f.p + f.n}; /* Resource: attributes = 1 */
        Field g;
        while ((r = next_field(&rb, &g)) > 0)
            if (g.num == 1 && g.wt == 2 &&
                read_kv(c->pl, g.p, g.n, w->res_slots, w->res_gen, w->res, &w->n_res, &c->res_overflow) < 0)
                return -1;
        if (r < 0)
            return -1;
    }
    c->res_read = 1;
    return r;
}

static int add_reject(Ctx *c, const Problem *pr, const SpanInfo *si, const uint8_t *span, size_t span_n)
{
    char id[40];
    size_t k = 0;
    for (size_t i = 0; i < si->span_id_n && k < sizeof id - 2; i++) {
        id[k++] = HEX[si->span_id[i] >> 4];
        id[k++] = HEX[si->span_id[i] & 15];
    }
    id[k] = 0;
    PyObject *name = PyUnicode_DecodeUTF8((const char *)si->name, (Py_ssize_t)si->name_n, "replace");
    if (!name)
        return -1;
    PyObject *item = Py_BuildValue("(sNy#)", REASONS[pr->reason],
                                   PyUnicode_FromFormat("span %s (%U): %s", k ? id : "(no id)", name, pr->detail),
                                   (const char *)span, (Py_ssize_t)span_n);
    Py_DECREF(name);
    if (!item)
        return -1;
    int rc = PyList_Append(c->rejected, item);
    Py_DECREF(item);
    return rc;
}

static int same_key(const Plan *pl, int k, const uint8_t *key, size_t kn)
{
    return (size_t)pl->keys[k].n == kn && memcmp(pl->keys[k].p, key, kn) == 0;
}

static int is_turn(const Plan *pl, const SpanInfo *si, const Val *op, const Val *flag)
{
    for (int i = 0; i < pl->n_names; i++)
        if (eq(si->name, si->name_n, pl->names[i].p, (size_t)pl->names[i].n))
            return 1;
    if (op->t == V_STR)
        for (int i = 0; i < pl->n_ops; i++)
            if (eq(op->p, op->n, pl->ops[i].p, (size_t)pl->ops[i].n))
                return 1;
    return flag->t == V_BOOL && flag->i;
}

/* One Span: the turn test from its name and gen_ai.operation.name (and turn_attribute); a turn
   span is read whole and written as a turn message, or rejected. */
static int read_span(Ctx *c, const uint8_t *p, size_t n)
{
    const Plan *pl = c->pl;
    Work *w = c->w;
    SpanInfo si = {(const uint8_t *)"", (const uint8_t *)"", (const uint8_t *)"", 0, 0, 0, 0, 0, 0, {0}, 0};
    Val op = {0}, flag = {0};
    Buf b = {p, p + n};
    Field f;
    int r;
    c->spans++;
    /* pass 1: the name and the attributes that decide */
    while ((r = next_field(&b, &f)) > 0) {
        if (f.num == 5 && f.wt == 2) {
            si.name = f.p;
            si.name_n = f.n;
        } else if (f.num == 9 && f.wt == 2) {
            const uint8_t *key;
            size_t kn;
            if (kv_key(f.p, f.n, &key, &kn) < 0)
                return -1;
            Val *into = NULL;
            if (same_key(pl, pl->key_op, key, kn))
                into = &op;
            else if (pl->key_turn_attr >= 0 && same_key(pl, pl->key_turn_attr, key, kn))
                into = &flag;
            if (into) {
                Val v = {V_NONE, NULL, 0, 0, 0.0};
                if (kv_value(f.p, f.n, &v) < 0)
                    return -1;
                *into = v; /* the last one wins */
            }
        }
    }
    if (r < 0)
        return -1;
    if (!is_turn(pl, &si, &op, &flag))
        return 0;
    /* pass 2: everything a turn reads */
    if (!c->res_read && read_resource(c) < 0)
        return -1;
    if (++w->span_gen == 0) {
        memset(w->span_slots, 0, sizeof w->span_slots);
        w->span_gen = 1;
    }
    w->n_span = 0;
    w->n_flags = 0;
    int overflow = 0;
    b.p = p;
    while ((r = next_field(&b, &f)) > 0) {
        switch (f.num) {
        case 1:
            if (f.wt == 2) {
                si.trace_id = f.p;
                si.trace_id_n = f.n;
            }
            break;
        case 2:
            if (f.wt == 2) {
                si.span_id = f.p;
                si.span_id_n = f.n;
            }
            break;
        case 7:
            if (f.wt == 1)
                si.start = f.v;
            break;
        case 8:
            if (f.wt == 1)
                si.end = f.v;
            break;
        case 9:
            if (f.wt == 2 && read_kv(pl, f.p, f.n, w->span_slots, w->span_gen, w->span, &w->n_span, &overflow) < 0)
                return -1;
            break;
        case 11:
            if (f.wt == 2 && read_event(pl, w, &si, f.p, f.n) < 0)
                return -1;
            break;
        case 15:
            if (f.wt == 2) { /* Status: code = 3 */
                Buf sb = {f.p, f.p + f.n};
                Field g;
                while ((r = next_field(&sb, &g)) > 0)
                    if (g.num == 3 && g.wt == 0)
                        si.status = (int)(int32_t)g.v;
                if (r < 0)
                    return -1;
            }
            break;
        default:
            break;
        }
    }
    if (r < 0)
        return -1;
    Problem pr;
    if (si.span_id_n == 0) {
        problem(&pr, R_MISSING, "no span_id");
        return add_reject(c, &pr, &si, p, n);
    }
    if (overflow || c->res_overflow) {
        problem(&pr, R_INVALID, "more than %d attributes under the segment prefix", PAIRS_MAX);
        return add_reject(c, &pr, &si, p, n);
    }
    Out *o = &c->out;
    o->n = 0;
    if (OUT_LIT(o, "{\"event_id\":\"") < 0 || out_grow(o, si.span_id_n * 2 + 64) < 0)
        return -1;
    for (size_t i = 0; i < si.span_id_n; i++) {
        o->p[o->n++] = HEX[si.span_id[i] >> 4];
        o->p[o->n++] = HEX[si.span_id[i] & 15];
    }
    /* ts: the end time (else the start) in whole microseconds, as RFC 3339: read back as
       microseconds / 1e6, correctly rounded (the same double as Python's end_ns // 1000 / 10**6), on
       the turn scanner's fast path */
    if (OUT_LIT(o, "\",\"ts\":") < 0 || emit_rfc3339(o, (si.end ? si.end : si.start) / 1000u) < 0)
        return -1;
    int m = map_fields(pl, w, &si, o, &pr);
    if (m < 0)
        return -1;
    if (m > 0)
        return add_reject(c, &pr, &si, p, n);
    if (si.trace_id_n && si.trace_id_n <= 32) { /* the trace id, last (as map_span): 64 hex digits at most */
        o->n--;                                 /* the closing brace */
        if (OUT_LIT(o, ",\"trace_id\":\"") < 0 || out_grow(o, si.trace_id_n * 2 + 2) < 0)
            return -1;
        for (size_t i = 0; i < si.trace_id_n; i++) {
            o->p[o->n++] = HEX[si.trace_id[i] >> 4];
            o->p[o->n++] = HEX[si.trace_id[i] & 15];
        }
        if (OUT_LIT(o, "\"}") < 0)
            return -1;
    }
    PyObject *turn = PyBytes_FromStringAndSize(o->p, (Py_ssize_t)o->n);
    if (!turn)
        return -1;
    int rc = PyList_Append(c->turns, turn);
    Py_DECREF(turn);
    return rc;
}

static int read_request(Ctx *c, const uint8_t *p, size_t n)
{
    Buf b = {p, p + n};
    Field f;
    int r;
    while ((r = next_field(&b, &f)) > 0) {
        if (f.num != 1 || f.wt != 2)
            continue;
        /* ResourceSpans: resource = 1, scope_spans = 2; the resource is read on the first turn span */
        c->res_p = f.p;
        c->res_n = f.n;
        c->res_read = 0;
        Buf rb = {f.p, f.p + f.n};
        Field g;
        while ((r = next_field(&rb, &g)) > 0) {
            if (g.num != 2 || g.wt != 2)
                continue;
            Buf sb = {g.p, g.p + g.n}; /* ScopeSpans: spans = 2 */
            Field h;
            while ((r = next_field(&sb, &h)) > 0)
                if (h.num == 2 && h.wt == 2 && read_span(c, h.p, h.n) < 0)
                    return -1;
            if (r < 0)
                return -1;
        }
        if (r < 0)
            return -1;
    }
    return r;
}

static PyObject *read_turns(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read(plan, raw: bytes)");
        return NULL;
    }
    Plan *pl = PyCapsule_GetPointer(args[0], "watcher.otlp.plan");
    if (!pl)
        return NULL;
    if (!pl->work && !(pl->work = PyMem_Calloc(1, sizeof(Work))))
        return PyErr_NoMemory();
    Work *w = pl->work; /* every count in it is reset where it is used; the generations only grow */
    Ctx c = {pl, w, PyList_New(0), PyList_New(0), 0, {NULL, 0, 0}, NULL, 0, 0, 0};
    PyObject *result = NULL;
    if (!c.turns || !c.rejected)
        goto done;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    if (read_request(&c, p, (size_t)PyBytes_GET_SIZE(args[1])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "malformed protobuf (a truncated field, a bad varint or wire type)");
        goto done;
    }
    result = Py_BuildValue("(OOn)", c.turns, c.rejected, c.spans);
done:
    Py_XDECREF(c.turns);
    Py_XDECREF(c.rejected);
    PyMem_Free(c.out.p);
    return result;
}

/* ---- sniff ----------------------------------------------------------------------------------- */

static PyObject *PROTO_STR, *JSON_STR;

static int is_blank(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static PyObject *sniff(PyObject *self, PyObject *values)
{
    PyObject *seq = PySequence_Fast(values, "sniff() takes a sequence");
    if (!seq)
        return NULL;
    PyObject *out = PyList_New(0);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    static const char key[] = "\"resourceSpans\"";
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *v = items[i];
        if (!PyBytes_CheckExact(v))
            continue;
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(v);
        Py_ssize_t len = PyBytes_GET_SIZE(v), j = 0;
        if (len == 0)
            continue;
        PyObject *kind = NULL;
        while (j < len && j < 64 && is_blank(p[j])) /* as otlp.sniff: blanks, then a JSON object? */
            j++;
        if (j < len && j < 64 && p[j] == '{') {
            Py_ssize_t limit = j + 81 < len ? j + 81 : len; /* the key within 80 bytes of the brace */
            j++;
            while (j < limit && is_blank(p[j]))
                j++;
            if (limit - j >= (Py_ssize_t)sizeof key - 1 && memcmp(p + j, key, sizeof key - 1) == 0)
                kind = JSON_STR;
        } else if (p[0] == 0x0A) {
            kind = PROTO_STR;
        }
        if (!kind)
            continue;
        PyObject *item = Py_BuildValue("(nO)", i, kind);
        if (!item || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    Py_DECREF(seq);
    return out;
}

/* ---- module ---------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"compile", (PyCFunction)(void (*)(void))compile_plan, METH_FASTCALL,
     "compile(*plan_args(mapping)) -> the mapping for read()"},
    {"read", (PyCFunction)(void (*)(void))read_turns, METH_FASTCALL,
     "read(plan, raw) -> (turn messages, [(reason, detail, span bytes)], spans); ValueError if malformed"},
    {"sniff", (PyCFunction)sniff, METH_O, "sniff(values) -> [(index, 'otlp_proto' | 'otlp_json')]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "watcher.contract._otlpscan",
    .m_doc = "Optional C decoder: OTLP/protobuf trace requests into watcher.turn/v1 messages (see read).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__otlpscan(void)
{
    if (!PROTO_STR && !(PROTO_STR = PyUnicode_InternFromString("otlp_proto")))
        return NULL;
    if (!JSON_STR && !(JSON_STR = PyUnicode_InternFromString("otlp_json")))
        return NULL;
    return PyModule_Create(&module);
}
