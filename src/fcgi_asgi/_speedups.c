/* Optional C versions of the costliest steps of a request: splitting records
 * and spotting a whole request in one read (records.py), decoding nginx's 25
 * name-value pairs (5.7 us in Python, 1.4 us here) into the ASGI scope
 * (asgi/scope.py), the response head (protocol/head.py), a small response's
 * records, the default access-log line (accesslog.py), RequestCore, the
 * response fields of a request with the fast path of an ASGI send
 * (protocol/core.py), and ConnectionCore, a connection's per-request steps
 * (protocol/conn_core.py). Each module falls back to its Python version when this
 * one is not built (no compiler, or FCGI_ASGI_NO_EXTENSIONS=1 at install
 * time); the tests check both give the same results and the same errors.
 *
 * The functions are importable, so they stay memory-safe whatever a caller in
 * the same process passes (tests/test_speedups_safety.py; .ci/sanitize runs
 * them under ASan and UBSan):
 * - No borrowed reference is held across a call that can run Python code (a
 *   key's __eq__ in a dict lookup, a .copy(), a collection's gc.callbacks
 *   when an allocation starts one): such references are owned for the call.
 * - Input bytes are read in place only when nothing can free or resize them
 *   during the call (bytes; a bytearray, or a memoryview of bytes or of a
 *   bytearray, both locked by the buffer held for the whole call); anything
 *   else is copied first with bytes(obj), as the Python versions do.
 * - Text compares are ASCII, never locale-dependent.
 * - State lives in the module object (multi-phase init), so each
 *   (sub)interpreter has its own.
 *
 * Where a function still differs from its Python version, the comment above
 * it says so; the gateway itself only ever passes bytes and plain dicts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define N_METHODS 7
static const char *method_names[N_METHODS] = {"GET",    "HEAD",  "POST",   "PUT",
                                              "DELETE", "PATCH", "OPTIONS"};

#define HNAME_SLOTS 64 /* a power of two */
#define PARAM_SLOTS 128 /* a power of two */
#define PARAM_CACHE_MAX 256 /* longer names and values are not kept */

/* Every member is a PyObject * (traverse and clear walk them as an array). */
typedef struct {
    PyObject *name_cache;  /* param name -> header name, bounded */
    /* RequestCore: its type, protocol/head.py's status lines (set_status_lines),
     * and the names it calls on the request, its connection and context. */
    PyObject *core_type, *status_lines, *empty_tuple, *zero_float;
    /* RequestCore.send(): the finished awaitable it returns for a message done
     * at once, its type, and the names it looks up. */
    PyObject *sent, *sent_type, *k_send_fast, *k_asgi_send;
    PyObject *k_trailers, *k_status, *k_body, *k_more_body, *k_ctx, *k_pending_heads,
        *k_turn_end_due, *k_at_turn_end, *k_write_last, *k_request_ended, *k_wake, *k_loop, *k_time;
    /* ConnectionCore: records.ProtocolError (imported on first need), 1, and
     * the names it calls on the connection, its context and requests. */
    PyObject *protocol_error, *one;
    PyObject *k_request_class, *k_params, *k_feed_body, *k_stdin_done, *k_start,
        *k_protocol_failed, *k_check_write_backlog, *k_records_received, *k_packets_received,
        *k_write, *k_stats, *k_requests_served, *k_retire_at, *k_on_retire, *k_forget_params,
        *k_close, *k_linger;
    PyObject *record_type; /* the record type parse_records last checked */
    PyObject *s_content_type, *s_content_length, *h_content_type, *h_content_length;
    PyObject *k_type, *k_asgi, *k_http_version, *k_method, *k_scheme, *k_path, *k_raw_path,
        *k_query_string, *k_root_path, *k_headers, *k_client, *k_server, *k_state,
        *k_extensions;
    PyObject *s_http, *s_https, *s_empty, *s_slash, *b_empty, *b_slash, *zero;
    PyObject *v_10, *v_11, *v_2, *v_3;
    PyObject *method_strs[N_METHODS];
    /* scope_from_params: empty scopes to copy, keys in order (index: state
     * given << 1 | extensions given); copying one costs a fraction of
     * inserting 14 keys into a new dict, which also resizes it once. */
    PyObject *scope_templates[4];
    /* The last server address (its params as bytes, and the tuple) and the
     * last client host: nginx sends the same ones request after request. */
    PyObject *server_host_raw, *server_port_raw, *server_addr;
    PyObject *client_host_raw, *client_host;
    /* Header names seen lately: HTTP_USER_AGENT -> b"user-agent", direct-mapped. */
    PyObject *hname_raw[HNAME_SLOTS], *hname[HNAME_SLOTS];
    /* decode_params_latin1: param names and values seen lately, as latin-1
     * str, direct-mapped by the name (a value kept in its name's slot). */
    PyObject *pname_raw[PARAM_SLOTS], *pname[PARAM_SLOTS];
    PyObject *pvalue_raw[PARAM_SLOTS], *pvalue[PARAM_SLOTS];
} speedups_state;

#define N_STATE_REFS (sizeof(speedups_state) / sizeof(PyObject *))

static inline speedups_state *
get_state(PyObject *module)
{
    return (speedups_state *)PyModule_GetState(module);
}

/* ---- input bytes ----------------------------------------------------------- */

/* The bytes of an argument, readable for the whole call. */
typedef struct {
    const char *p;
    Py_ssize_t len;
    Py_buffer view; /* view.obj set: the exporter is locked until input_close */
    PyObject *copy; /* bytes(obj) when obj could change under us */
} input;

/* bytes and bytearray are read in place: bytes cannot change, and a bytearray
 * refuses to resize while a buffer is exported (a memoryview of either holds
 * such a buffer itself). Another exporter may not (ctypes.resize() ignores
 * exports), a non-contiguous view is not one run of bytes, and a non-buffer
 * object may still convert: copy them with bytes(obj), as the Python versions
 * do, before any pointer is taken. */
static int
input_open(PyObject *obj, input *in)
{
    in->view.obj = NULL;
    in->copy = NULL;
    if (PyBytes_CheckExact(obj)) {
        in->p = PyBytes_AS_STRING(obj);
        in->len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyByteArray_CheckExact(obj) || PyMemoryView_Check(obj)) {
        if (PyObject_GetBuffer(obj, &in->view, PyBUF_SIMPLE) == 0) {
            PyObject *base = PyMemoryView_Check(obj) ? PyMemoryView_GET_BASE(obj) : obj;
            if (base != NULL && (PyBytes_CheckExact(base) || PyByteArray_CheckExact(base))) {
                in->p = (const char *)in->view.buf;
                in->len = in->view.len;
                return 0;
            }
            PyBuffer_Release(&in->view);
            in->view.obj = NULL;
        } else {
            PyErr_Clear(); /* bytes(obj) below copies it, or raises the same error */
        }
    }
    in->copy = PyObject_CallOneArg((PyObject *)&PyBytes_Type, obj);
    if (in->copy == NULL) {
        return -1;
    }
    in->p = PyBytes_AS_STRING(in->copy);
    in->len = PyBytes_GET_SIZE(in->copy);
    return 0;
}

static void
input_close(input *in)
{
    if (in->view.obj != NULL) {
        PyBuffer_Release(&in->view);
    }
    Py_CLEAR(in->copy);
}

/* ASCII case-insensitive compare of n bytes against a lower-case literal
 * (strncasecmp follows LC_CTYPE; the Python rules use bytes.lower()). */
static int
ascii_eq_nocase(const char *s, const char *lower_lit, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z') {
            c += 'a' - 'A';
        }
        if (c != (unsigned char)lower_lit[i]) {
            return 0;
        }
    }
    return 1;
}

/* ---- decode_params --------------------------------------------------------- */

/* Read one FastCGI name-value length at *pos: 1 byte below 0x80, else 4 bytes
 * big-endian with the top bit set. Returns -1 when the data is cut short. */
static Py_ssize_t
read_length(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos)
{
    Py_ssize_t p = *pos;
    if (p >= end) {
        return -1;
    }
    if (buf[p] < 0x80) {
        *pos = p + 1;
        return buf[p];
    }
    if (end - p < 4) {
        return -1;
    }
    *pos = p + 4;
    return ((Py_ssize_t)(buf[p] & 0x7f) << 24) | ((Py_ssize_t)buf[p + 1] << 16) |
           ((Py_ssize_t)buf[p + 2] << 8) | (Py_ssize_t)buf[p + 3];
}

/* A dict of bytes (decode_params) or of latin-1 str (decode_params_latin1:
 * what a WSGI environ holds, without a bytes object per name and value). */
/* The latin-1 str of the n bytes at p: the one kept in slot idx when it is of
 * those bytes, else a new one, kept there if short. nginx sends the same
 * names and most of the same values request after request: a kept name's
 * hash is already computed, so the dict insert skips hashing it too. Only
 * bytes and str are dropped, so no Python code runs. */
static PyObject *
latin1_kept(PyObject **raw_slots, PyObject **str_slots, unsigned idx, const char *p,
            Py_ssize_t n)
{
    PyObject *raw = raw_slots[idx];
    if (raw != NULL && PyBytes_GET_SIZE(raw) == n && memcmp(PyBytes_AS_STRING(raw), p, n) == 0) {
        return Py_NewRef(str_slots[idx]);
    }
    PyObject *text = PyUnicode_DecodeLatin1(p, n, NULL);
    if (text != NULL && n <= PARAM_CACHE_MAX) {
        PyObject *copy = PyBytes_FromStringAndSize(p, n);
        if (copy == NULL) {
            Py_DECREF(text);
            return NULL;
        }
        Py_XSETREF(raw_slots[idx], copy);
        Py_XSETREF(str_slots[idx], Py_NewRef(text));
    }
    return text;
}

/* The params dict of PARAMS data: names and values as bytes, or with st as
 * latin-1 str from st's cache (decode_params_latin1). */
static PyObject *
decode_params_as(PyObject *arg, speedups_state *st)
{
    input in;
    if (input_open(arg, &in) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)in.p;
    Py_ssize_t end = in.len, pos = 0;
    PyObject *params = PyDict_New();
    if (params == NULL) {
        goto fail;
    }
    while (pos < end) {
        Py_ssize_t nlen = read_length(buf, end, &pos);
        Py_ssize_t vlen = nlen < 0 ? -1 : read_length(buf, end, &pos);
        if (nlen < 0 || vlen < 0) {
            PyErr_SetString(PyExc_ValueError, "a name-value length is cut short in PARAMS data");
            goto fail;
        }
        if (nlen > end - pos || vlen > end - pos - nlen) {
            PyErr_Format(PyExc_ValueError,
                         "the last name-value pair overruns PARAMS data by %lld bytes",
                         (long long)pos + nlen + vlen - end);
            goto fail;
        }
        const char *at = (const char *)buf + pos;
        PyObject *name, *value;
        if (st != NULL) {
            uint32_t hash = 2166136261u; /* FNV-1a */
            for (Py_ssize_t j = 0; j < nlen; j++) {
                hash = (hash ^ (unsigned char)at[j]) * 16777619u;
            }
            unsigned idx = hash & (PARAM_SLOTS - 1);
            name = latin1_kept(st->pname_raw, st->pname, idx, at, nlen);
            value = name ? latin1_kept(st->pvalue_raw, st->pvalue, idx, at + nlen, vlen) : NULL;
        } else {
            name = PyBytes_FromStringAndSize(at, nlen);
            value = name ? PyBytes_FromStringAndSize(at + nlen, vlen) : NULL;
        }
        int failed = value == NULL || PyDict_SetItem(params, name, value) < 0;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (failed) {
            goto fail;
        }
        pos += nlen + vlen;
    }
    input_close(&in);
    return params;

fail:
    Py_XDECREF(params);
    input_close(&in);
    return NULL;
}

static PyObject *
decode_params(PyObject *module, PyObject *arg)
{
    return decode_params_as(arg, NULL);
}

static PyObject *
decode_params_latin1(PyObject *module, PyObject *arg)
{
    return decode_params_as(arg, get_state(module));
}

/* ---- parse_records: whole records out of a buffer ------------------------- */

/* Records are built the way tuple.__new__(record_type, items) builds them
 * (tp_alloc, then the items), so record_type must be a class it accepts: it
 * refuses those it cannot build safely, such as a struct sequence
 * (time.struct_time: cleanup would read fields past the three allocated) or a
 * C subclass with a __new__ of its own. Checked once per class. */
static int
check_record_type(speedups_state *st, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "parse_records(src, record_type: tuple subclass)");
        return -1;
    }
    PyObject *tuple_new = PyObject_GetAttrString((PyObject *)&PyTuple_Type, "__new__");
    if (tuple_new == NULL) {
        return -1;
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *probe = empty ? PyObject_CallFunctionObjArgs(tuple_new, cls, empty, NULL) : NULL;
    Py_DECREF(tuple_new);
    Py_XDECREF(empty);
    if (probe == NULL) {
        return -1;
    }
    Py_DECREF(probe);
    Py_INCREF(cls);
    Py_XSETREF(st->record_type, cls);
    return 0;
}

/* parse_records(src, record_type) -> (records, consumed)
 * Every whole record in src (read in place when bytes or bytearray) as an
 * instance of record_type (a tuple subclass of three: type, request id,
 * content), and how many bytes they took; a partial record at the end is
 * left. ValueError for a header whose version is not 1. */
static PyObject *
parse_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    speedups_state *st = get_state(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_records(src, record_type: tuple subclass)");
        return NULL;
    }
    if (args[1] != st->record_type && check_record_type(st, args[1]) < 0) {
        return NULL;
    }
    /* Owned: a collection started by an allocation below could run code that
     * drops the cached type. */
    PyTypeObject *rtype_cls = (PyTypeObject *)Py_NewRef(args[1]);
    input in;
    if (input_open(args[0], &in) < 0) {
        Py_DECREF(rtype_cls);
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)in.p;
    Py_ssize_t end = in.len, pos = 0;
    PyObject *records = PyList_New(0);
    if (records == NULL) {
        goto fail;
    }
    while (end - pos >= 8) {
        const unsigned char *h = buf + pos;
        if (h[0] != 1) {
            PyErr_Format(PyExc_ValueError,
                         "record header has version %d, only version 1 exists", (int)h[0]);
            goto fail;
        }
        Py_ssize_t clen = ((Py_ssize_t)h[4] << 8) | h[5];
        if (clen + h[6] > end - pos - 8) {
            break;
        }
        PyObject *record = rtype_cls->tp_alloc(rtype_cls, 3);
        if (record == NULL) {
            goto fail;
        }
        PyObject *rtype = PyLong_FromLong(h[1]);
        PyObject *rid = PyLong_FromLong(((long)h[2] << 8) | h[3]);
        PyObject *content = PyBytes_FromStringAndSize((const char *)h + 8, clen);
        if (rtype == NULL || rid == NULL || content == NULL) {
            Py_XDECREF(rtype);
            Py_XDECREF(rid);
            Py_XDECREF(content);
            Py_DECREF(record);
            goto fail;
        }
        PyTuple_SET_ITEM(record, 0, rtype);
        PyTuple_SET_ITEM(record, 1, rid);
        PyTuple_SET_ITEM(record, 2, content);
        int rc = PyList_Append(records, record);
        Py_DECREF(record);
        if (rc < 0) {
            goto fail;
        }
        pos += 8 + clen + h[6];
    }
    input_close(&in);
    Py_DECREF(rtype_cls);
    return Py_BuildValue("(Nn)", records, pos);

fail:
    Py_XDECREF(records);
    input_close(&in);
    Py_DECREF(rtype_cls);
    return NULL;
}

/* ---- request_packets: whole requests in one read -------------------------- */

/* The header of the record at buf[pos] when it is whole within end, of
 * version 1, of type rtype and for request id rid (any non-zero id when rid is
 * 0); its content length in *clen, and the offset of the next record, else -1. */
static Py_ssize_t
next_record(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end, int rtype, long *rid,
            Py_ssize_t *clen)
{
    if (end - pos < 8) {
        return -1;
    }
    const unsigned char *h = buf + pos;
    long id = ((long)h[2] << 8) | h[3];
    if (h[0] != 1 || h[1] != rtype || id == 0 || (*rid != 0 && id != *rid)) {
        return -1;
    }
    *rid = id;
    *clen = ((Py_ssize_t)h[4] << 8) | h[5];
    if (*clen + h[6] > end - pos - 8) {
        return -1;
    }
    return pos + 8 + *clen + h[6];
}

/* More whole requests in one read than this go record by record (keeps the
 * check for a repeated request id cheap). */
#define MAX_PACKET_REQUESTS 128

/* whole_response(request_id, head, body) -> bytes: one STDOUT record holding
 * head and body, the empty STDOUT and a successful END_REQUEST, the whole
 * small response in one object (records.whole_response_py is the Python
 * version). ValueError when head and body do not fit in one record. */
static PyObject *whole_response_impl(long rid, PyObject *head, PyObject *body);

static PyObject *
whole_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "whole_response(request_id: int, head: bytes, body: bytes)");
        return NULL;
    }
    int overflow;
    long rid = PyLong_AsLongAndOverflow(args[0], &overflow);
    if (rid == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t hlen = PyBytes_GET_SIZE(args[1]), blen = PyBytes_GET_SIZE(args[2]);
    if (overflow || rid < 0 || rid > 0xFFFF || hlen > 0xFFFF || blen > 0xFFFF - hlen) {
        PyErr_SetString(PyExc_ValueError, "request id or content out of a record's range");
        return NULL;
    }
    return whole_response_impl(rid, args[1], args[2]);
}

/* whole_response() for arguments already checked: rid 0-65535, head and body
 * bytes whose sizes add up to at most 65535. */
static PyObject *
whole_response_impl(long rid, PyObject *head, PyObject *body)
{
    Py_ssize_t hlen = PyBytes_GET_SIZE(head), blen = PyBytes_GET_SIZE(body);
    Py_ssize_t clen = hlen + blen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 8 + clen + 8 + 16);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char hi = (unsigned char)(rid >> 8), lo = (unsigned char)rid;
    const unsigned char stdout_head[8] = {1, 6, hi, lo, (unsigned char)(clen >> 8), (unsigned char)clen, 0, 0};
    memcpy(o, stdout_head, 8);
    memcpy(o + 8, PyBytes_AS_STRING(head), hlen);
    memcpy(o + 8 + hlen, PyBytes_AS_STRING(body), blen);
    /* The empty STDOUT, then END_REQUEST: appStatus 0, FCGI_REQUEST_COMPLETE. */
    const unsigned char tail[24] = {1, 6, hi, lo, 0, 0, 0, 0, 1, 3, hi, lo, 0, 8, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(o + 8 + clen, tail, 24);
    return out;
}

/* request_packets(src) -> [(request_id, flags, params, body), ...] or None
 * src is exactly one or more whole RESPONDER requests, each as nginx sends a
 * request in one write (HAProxy sends several GETs in one): BEGIN_REQUEST, one
 * non-empty PARAMS record, the empty PARAMS, any non-empty STDIN records (the
 * body, joined into one bytes; b"" when there are none) and the empty STDIN,
 * all for one non-zero request id, no id twice, nothing before, between or
 * after, at most MAX_PACKET_REQUESTS of them. Anything else, malformed input
 * included, is None: the caller then reads records one by one
 * (records.request_packets_py is the Python version). */
static PyObject *
request_packets(PyObject *module, PyObject *arg)
{
    input in;
    if (input_open(arg, &in) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)in.p;
    Py_ssize_t end = in.len, pos = 0, clen = 0;
    Py_ssize_t params_at[MAX_PACKET_REQUESTS], params_len[MAX_PACKET_REQUESTS];
    Py_ssize_t body_at[MAX_PACKET_REQUESTS], body_len[MAX_PACKET_REQUESTS];
    long ids[MAX_PACKET_REQUESTS];
    int flags[MAX_PACKET_REQUESTS];
    int n = 0;
    PyObject *result = NULL;
    while (pos < end) {
        long rid = 0;
        if (n == MAX_PACKET_REQUESTS) {
            goto none;
        }
        /* BEGIN_REQUEST: role (2 bytes), flags, 5 reserved bytes. */
        Py_ssize_t at = pos;
        if ((pos = next_record(buf, pos, end, 1, &rid, &clen)) < 0 || clen != 8) {
            goto none;
        }
        const unsigned char *begin = buf + at + 8;
        if ((((int)begin[0] << 8) | begin[1]) != 1) {
            goto none;
        }
        for (int i = 0; i < n; i++) {
            if (ids[i] == rid) {
                goto none;
            }
        }
        ids[n] = rid;
        flags[n] = begin[2];
        params_at[n] = pos + 8;
        if ((pos = next_record(buf, pos, end, 4, &rid, &params_len[n])) < 0 ||
            params_len[n] == 0) {
            goto none;
        }
        if ((pos = next_record(buf, pos, end, 4, &rid, &clen)) < 0 || clen != 0) {
            goto none;
        }
        /* The body's STDIN records, up to the empty one; copied out below. */
        body_at[n] = pos;
        body_len[n] = 0;
        for (;;) {
            if ((pos = next_record(buf, pos, end, 5, &rid, &clen)) < 0) {
                goto none;
            }
            if (clen == 0) {
                break;
            }
            body_len[n] += clen;
        }
        n++;
    }
    if (n == 0) {
        goto none;
    }
    result = PyList_New(n);
    for (int i = 0; result != NULL && i < n; i++) {
        /* Built by hand: Py_BuildValue parses its format on every call. */
        PyObject *rid = PyLong_FromLong(ids[i]), *fl = PyLong_FromLong(flags[i]);
        PyObject *params = PyBytes_FromStringAndSize((const char *)buf + params_at[i],
                                                     params_len[i]);
        /* One copy of the body, however many records carried it. */
        PyObject *body = PyBytes_FromStringAndSize(NULL, body_len[i]);
        if (body != NULL && body_len[i] > 0) {
            char *out = PyBytes_AS_STRING(body);
            Py_ssize_t p = body_at[i], done = 0;
            while (done < body_len[i]) {
                const unsigned char *h = buf + p;
                Py_ssize_t len = ((Py_ssize_t)h[4] << 8) | h[5];
                memcpy(out + done, h + 8, len);
                done += len;
                p += 8 + len + h[6];
            }
        }
        PyObject *item = rid && fl && params && body ? PyTuple_New(4) : NULL;
        if (item == NULL) {
            Py_XDECREF(rid);
            Py_XDECREF(fl);
            Py_XDECREF(params);
            Py_XDECREF(body);
            Py_CLEAR(result);
        } else {
            PyTuple_SET_ITEM(item, 0, rid);
            PyTuple_SET_ITEM(item, 1, fl);
            PyTuple_SET_ITEM(item, 2, params);
            PyTuple_SET_ITEM(item, 3, body);
            PyList_SET_ITEM(result, i, item);
        }
    }
    input_close(&in);
    return result;

none:
    input_close(&in);
    Py_RETURN_NONE;
}

/* ---- encode_head: the CGI response head, happy path only ------------------ */

static int
is_token_char(unsigned char c)
{
    /* RFC 9110 tchar */
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A hop-by-hop header name (protocol/head.py HOP_BY_HOP), any case. */
static int
is_hop_by_hop(const unsigned char *np, Py_ssize_t nl)
{
    static const char *const names[] = {
        "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((size_t)nl == strlen(names[i]) && ascii_eq_nocase((const char *)np, names[i], nl)) {
            return 1;
        }
    }
    return 0;
}

/* encode_head(status_line, headers) -> bytes, or None when anything is
 * unusual (not a list/tuple of (bytes, bytes) pairs, a name that is not a
 * token, is "status" or hop-by-hop, a value with CR, LF or NUL, a head too
 * long for a bytes object): protocol/head.py then takes the Python path,
 * which raises the precise error or drops the header. The items are borrowed
 * from the list across the one allocation below: a bytes object is not
 * tracked by the collector, so allocating it runs no Python code that could
 * change the list. */
static PyObject *
encode_head_impl(PyObject *line, PyObject *headers)
{
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) {
        Py_RETURN_NONE;
    }
    PyObject *seq = headers;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t total = PyBytes_GET_SIZE(line) + 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = items[i];
        if (!(PyTuple_CheckExact(h) || PyList_CheckExact(h)) || PySequence_Fast_GET_SIZE(h) != 2) {
            Py_RETURN_NONE;
        }
        PyObject *name = PySequence_Fast_GET_ITEM(h, 0), *value = PySequence_Fast_GET_ITEM(h, 1);
        if (!PyBytes_CheckExact(name) || !PyBytes_CheckExact(value)) {
            Py_RETURN_NONE;
        }
        Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(value);
        const unsigned char *np = (const unsigned char *)PyBytes_AS_STRING(name);
        const unsigned char *vp = (const unsigned char *)PyBytes_AS_STRING(value);
        if (nl == 0 || (nl == 6 && ascii_eq_nocase((const char *)np, "status", 6)) ||
            is_hop_by_hop(np, nl)) {
            Py_RETURN_NONE;
        }
        for (Py_ssize_t j = 0; j < nl; j++) {
            if (!is_token_char(np[j])) {
                Py_RETURN_NONE;
            }
        }
        for (Py_ssize_t j = 0; j < vl; j++) {
            if (vp[j] == '\r' || vp[j] == '\n' || vp[j] == 0) {
                Py_RETURN_NONE;
            }
        }
        /* Each size is below PY_SSIZE_T_MAX, their sum need not be (a 32-bit
         * build with a few 1 GiB values). */
        if (nl > PY_SSIZE_T_MAX - 4 - vl || nl + vl + 4 > PY_SSIZE_T_MAX - total) {
            Py_RETURN_NONE;
        }
        total += nl + vl + 4;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        return NULL;
    }
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line));
    p += PyBytes_GET_SIZE(line);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = items[i];
        PyObject *name = PySequence_Fast_GET_ITEM(h, 0), *value = PySequence_Fast_GET_ITEM(h, 1);
        memcpy(p, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        p += PyBytes_GET_SIZE(name);
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        p += PyBytes_GET_SIZE(value);
        *p++ = '\r';
        *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    return out;
}

static PyObject *
encode_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_head(status_line: bytes, headers)");
        return NULL;
    }
    return encode_head_impl(args[0], args[1]);
}

/* ---- request_headers: the ASGI header list of a request's params ---------- */

/* value.isdigit() for a param value: 1, 0, or -1 with an exception set. */
static int
value_is_digits(PyObject *value)
{
    if (PyBytes_CheckExact(value)) {
        Py_ssize_t n = PyBytes_GET_SIZE(value);
        const char *p = PyBytes_AS_STRING(value);
        if (n == 0) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (p[i] < '0' || p[i] > '9') {
                return 0;
            }
        }
        return 1;
    }
    PyObject *result = PyObject_CallMethod(value, "isdigit", NULL);
    if (result == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(result);
    Py_DECREF(result);
    return truth;
}

/* HTTP_X_Y -> x-y, from the cache when seen before (exact bytes only: a
 * subclass's __hash__ and __eq__ stay out of it). New reference. */
static PyObject *
header_name(speedups_state *st, PyObject *param)
{
    int cacheable = PyBytes_CheckExact(param);
    PyObject *name;
    if (cacheable) {
        name = PyDict_GetItemWithError(st->name_cache, param);
        if (name != NULL) {
            return Py_NewRef(name);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_ssize_t n = PyBytes_GET_SIZE(param) - 5;
    const char *src = PyBytes_AS_STRING(param) + 5;
    name = PyBytes_FromStringAndSize(NULL, n);
    if (name == NULL) {
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(name);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    if (cacheable && PyDict_GET_SIZE(st->name_cache) < 4096 &&
        PyDict_SetItem(st->name_cache, param, name) < 0) {
        Py_DECREF(name);
        return NULL;
    }
    return name;
}

static int
append_pair(PyObject *headers, PyObject *name, PyObject *value)
{
    PyObject *pair = PyTuple_Pack(2, name, value);
    if (pair == NULL) {
        return -1;
    }
    int rc = PyList_Append(headers, pair);
    Py_DECREF(pair);
    return rc;
}

/* The header of one param, appended when it makes one; key and value are
 * owned by the caller, since the lookups can run Python code. 0 or -1. */
static int
add_header(speedups_state *st, PyObject *headers, PyObject *params, PyObject *key,
           PyObject *value)
{
    if (!PyBytes_Check(key)) {
        if (PyUnicode_Check(key)) {
            return 0; /* a str never starts with b"HTTP_": no header, as in Python */
        }
        PyErr_Format(PyExc_TypeError, "request_headers(): a param name must be bytes, not %.100s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    Py_ssize_t klen = PyBytes_GET_SIZE(key);
    const char *k = PyBytes_AS_STRING(key);
    if (klen > 5 && memcmp(k, "HTTP_", 5) == 0) {
        if (klen == 17 && memcmp(k + 5, "CONTENT_TYPE", 12) == 0) {
            int has = PyDict_Contains(params, st->s_content_type);
            if (has != 0) {
                return has < 0 ? -1 : 0;
            }
        } else if (klen == 19 && memcmp(k + 5, "CONTENT_LENGTH", 14) == 0) {
            int has = PyDict_Contains(params, st->s_content_length);
            if (has != 0) {
                return has < 0 ? -1 : 0;
            }
            int digits = value_is_digits(value);
            if (digits <= 0) {
                return digits;
            }
        }
        PyObject *name = header_name(st, key);
        if (name == NULL) {
            return -1;
        }
        int rc = append_pair(headers, name, value);
        Py_DECREF(name);
        return rc;
    }
    if (klen == 12 && memcmp(k, "CONTENT_TYPE", 12) == 0) {
        int keep = PyBytes_CheckExact(value) ? PyBytes_GET_SIZE(value) > 0 : PyObject_IsTrue(value);
        return keep <= 0 ? keep : append_pair(headers, st->h_content_type, value);
    }
    if (klen == 14 && memcmp(k, "CONTENT_LENGTH", 14) == 0) {
        int keep = value_is_digits(value);
        return keep <= 0 ? keep : append_pair(headers, st->h_content_length, value);
    }
    return 0;
}

/* The same rules as scope.request_headers_py: HTTP_* params become headers;
 * CONTENT_TYPE when not empty and CONTENT_LENGTH when a number; their
 * HTTP_CONTENT_* twins only when the CGI variable is absent. A dict changed
 * during the call raises RuntimeError, as iterating it in Python does.
 * Differences: params must be a dict (Python takes any mapping), and a name
 * that is neither bytes nor str raises TypeError (Python raises for most,
 * but skips a sequence whose first five items are not b"HTTP_"). */
static PyObject *
request_headers(PyObject *module, PyObject *params)
{
    speedups_state *st = get_state(module);
    if (!PyDict_CheckExact(params)) {
        PyErr_SetString(PyExc_TypeError, "request_headers() takes a dict");
        return NULL;
    }
    PyObject *headers = PyList_New(0);
    if (headers == NULL) {
        return NULL;
    }
    Py_ssize_t size = PyDict_GET_SIZE(params), it = 0;
    PyObject *key, *value;
    for (;;) {
        if (PyDict_GET_SIZE(params) != size) {
            PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
            goto fail;
        }
        if (!PyDict_Next(params, &it, &key, &value)) {
            break;
        }
        Py_INCREF(key);
        Py_INCREF(value);
        int rc = add_header(st, headers, params, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0) {
            goto fail;
        }
    }
    return headers;

fail:
    Py_DECREF(headers);
    return NULL;
}

/* ---- build_scope: the whole ASGI scope for the common case ---------------- */

/* The CGI variables the scope is built from; an index into vars[] below. */
enum {
    V_HTTPS,
    V_PATH_INFO,
    V_SCRIPT_NAME,
    V_REQUEST_URI,
    V_REMOTE_ADDR,
    V_REMOTE_PORT,
    V_SERVER_ADDR,
    V_SERVER_NAME,
    V_SERVER_PORT,
    V_QUERY_STRING,
    V_CONTENT_TYPE,
    V_REQUEST_SCHEME,
    V_REQUEST_METHOD,
    V_CONTENT_LENGTH,
    V_SERVER_PROTOCOL,
    V_SERVER_SOFTWARE,
    V_COUNT
};

#define IS(lit) (memcmp(n, lit, sizeof(lit) - 1) == 0)

static int
var_index(const char *n, Py_ssize_t len)
{
    switch (len) {
    case 5:
        return IS("HTTPS") ? V_HTTPS : -1;
    case 9:
        return IS("PATH_INFO") ? V_PATH_INFO : -1;
    case 11:
        if (n[0] == 'R') {
            return IS("REQUEST_URI") ? V_REQUEST_URI
                 : IS("REMOTE_ADDR") ? V_REMOTE_ADDR
                 : IS("REMOTE_PORT") ? V_REMOTE_PORT : -1;
        }
        return IS("SERVER_ADDR") ? V_SERVER_ADDR
             : IS("SERVER_NAME") ? V_SERVER_NAME
             : IS("SERVER_PORT") ? V_SERVER_PORT
             : IS("SCRIPT_NAME") ? V_SCRIPT_NAME : -1;
    case 12:
        return IS("QUERY_STRING") ? V_QUERY_STRING : IS("CONTENT_TYPE") ? V_CONTENT_TYPE : -1;
    case 14:
        return IS("REQUEST_SCHEME") ? V_REQUEST_SCHEME
             : IS("REQUEST_METHOD") ? V_REQUEST_METHOD
             : IS("CONTENT_LENGTH") ? V_CONTENT_LENGTH : -1;
    case 15:
        return IS("SERVER_PROTOCOL") ? V_SERVER_PROTOCOL
             : IS("SERVER_SOFTWARE") ? V_SERVER_SOFTWARE : -1;
    }
    return -1;
}

#undef IS

typedef struct {
    const char *p;
    Py_ssize_t len; /* -1: absent */
} span;

#define MAX_HEADERS 128

/* 1 for a non-empty run of ASCII digits (bytes.isdigit()), else 0. */
static int
span_digits(span s)
{
    if (s.len <= 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9') {
            return 0;
        }
    }
    return 1;
}

/* A port param's value: -1 when it is not a number, -2 when it is one too
 * long for a long long (the Python path handles it). */
static long long
port_value(span s)
{
    if (!span_digits(s)) {
        return -1;
    }
    if (s.len > 18) {
        return -2;
    }
    long long v = 0;
    for (Py_ssize_t i = 0; i < s.len; i++) {
        v = v * 10 + (s.p[i] - '0');
    }
    return v;
}

static int
span_is(span s, const char *lit)
{
    Py_ssize_t n = (Py_ssize_t)strlen(lit);
    return s.len == n && memcmp(s.p, lit, n) == 0;
}

static int
span_is_nocase(span s, const char *lit)
{
    Py_ssize_t n = (Py_ssize_t)strlen(lit);
    return s.len == n && ascii_eq_nocase(s.p, lit, n);
}

/* New reference to the http_version string for SERVER_PROTOCOL (scope._HTTP_VERSIONS). */
static PyObject *
http_version(speedups_state *st, span s)
{
    PyObject *v = st->v_11;
    if (s.len < 0) {
        v = st->v_11;
    } else if (span_is(s, "HTTP/1.0") || span_is(s, "HTTP/0.9")) {
        v = st->v_10;
    } else if (span_is(s, "HTTP/2.0") || span_is(s, "HTTP/2")) {
        v = st->v_2;
    } else if (span_is(s, "HTTP/3") || span_is(s, "HTTP/3.0")) {
        v = st->v_3;
    }
    return Py_NewRef(v);
}

static int
hex_value(char c)
{
    return (c >= '0' && c <= '9')   ? c - '0'
           : (c >= 'a' && c <= 'f') ? c - 'a' + 10
           : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                    : -1;
}

/* protocol/paths.py _decode_path: percent-decode (a '%' without two hex digits stays as
 * is, like urllib's unquote_to_bytes), then UTF-8 with "replace". */
static PyObject *
decode_path(span raw)
{
    const char *pct = memchr(raw.p, '%', raw.len);
    if (pct == NULL) {
        return PyUnicode_DecodeUTF8(raw.p, raw.len, "replace");
    }
    char small[512];
    char *out = raw.len <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc(raw.len);
    if (out == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < raw.len; i++) {
        char c = raw.p[i];
        int hi, lo;
        if (c == '%' && i + 2 < raw.len &&
            (hi = hex_value(raw.p[i + 1])) >= 0 && (lo = hex_value(raw.p[i + 2])) >= 0) {
            out[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[n++] = c;
        }
    }
    PyObject *path = PyUnicode_DecodeUTF8(out, n, "replace");
    if (out != small) {
        PyMem_Free(out);
    }
    return path;
}

/* Whether bytes object raw (or NULL) holds exactly the bytes of s. */
static int
span_matches(PyObject *raw, span s)
{
    return raw != NULL && PyBytes_GET_SIZE(raw) == s.len &&
           memcmp(PyBytes_AS_STRING(raw), s.p, s.len) == 0;
}

/* Remember the bytes of s in *raw_slot and value (borrowed) in *value_slot.
 * Only bytes, str and tuples of them are dropped, so no Python code runs. */
static int
remember(PyObject **raw_slot, span s, PyObject **value_slot, PyObject *value)
{
    PyObject *raw = PyBytes_FromStringAndSize(s.p, s.len);
    if (raw == NULL) {
        return -1;
    }
    Py_XSETREF(*raw_slot, raw);
    Py_XSETREF(*value_slot, Py_NewRef(value));
    return 0;
}

/* (host, port) for the scope's client/server, stealing host (NULL: an error
 * already set); port_absent is the port used when the param is not a number
 * (0 for client, None for server). */
static PyObject *
address(PyObject *h, span port, PyObject *port_absent)
{
    if (h == NULL) {
        return NULL;
    }
    long long pv = port_value(port);
    PyObject *p = pv >= 0 ? PyLong_FromLongLong(pv) : Py_NewRef(port_absent);
    PyObject *t = p != NULL ? PyTuple_New(2) : NULL;
    if (t == NULL) {
        Py_DECREF(h);
        Py_XDECREF(p);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, h);
    PyTuple_SET_ITEM(t, 1, p);
    return t;
}

/* scope["client"]: the host string is the last request's when the same. */
static PyObject *
client_address(speedups_state *st, span host, span port)
{
    PyObject *h;
    if (span_matches(st->client_host_raw, host)) {
        h = Py_NewRef(st->client_host);
    } else {
        h = PyUnicode_DecodeLatin1(host.p, host.len, NULL);
        if (h != NULL && host.len <= 64 &&
            remember(&st->client_host_raw, host, &st->client_host, h) < 0) {
            Py_CLEAR(h);
        }
    }
    return address(h, port, st->zero);
}

/* scope["server"]: the last request's tuple when its params were the same. */
static PyObject *
server_address(speedups_state *st, span host, span port)
{
    if (port.len >= 0 && span_matches(st->server_host_raw, host) &&
        span_matches(st->server_port_raw, port)) {
        return Py_NewRef(st->server_addr);
    }
    PyObject *t = address(PyUnicode_DecodeLatin1(host.p, host.len, NULL), port, Py_None);
    if (t != NULL && port.len >= 0 && host.len <= 64 && port.len <= 8) {
        /* The port first: server_host_raw matching means the pair is whole. */
        if (remember(&st->server_port_raw, port, &st->server_addr, t) < 0 ||
            remember(&st->server_host_raw, host, &st->server_addr, t) < 0) {
            Py_CLEAR(st->server_host_raw);
            Py_CLEAR(t);
        }
    }
    return t;
}

/* HTTP_X_Y (the whole param name, longer than 5 bytes) -> b"x-y", from a
 * small direct-mapped cache of recent names. New reference. */
static PyObject *
cached_header_name(speedups_state *st, span n)
{
    uint32_t hash = 2166136261u; /* FNV-1a */
    for (Py_ssize_t j = 5; j < n.len; j++) {
        hash = (hash ^ (unsigned char)n.p[j]) * 16777619u;
    }
    unsigned idx = hash & (HNAME_SLOTS - 1);
    if (span_matches(st->hname_raw[idx], n)) {
        return Py_NewRef(st->hname[idx]);
    }
    PyObject *name = PyBytes_FromStringAndSize(NULL, n.len - 5);
    if (name == NULL) {
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(name);
    for (Py_ssize_t j = 5; j < n.len; j++) {
        char c = n.p[j];
        *dst++ = c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    /* Long names are not kept: the cache stays small whatever clients send. */
    if (n.len <= 64 && remember(&st->hname_raw[idx], n, &st->hname[idx], name) < 0) {
        Py_CLEAR(name);
    }
    return name;
}

/* Set scope[key] = value, stealing the reference to value. */
static int
set_steal(PyObject *scope, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(scope, key, value);
    Py_DECREF(value);
    return rc;
}

/* scope_from_params(params_data, asgi, state, extensions) -> dict, or None.
 *
 * scope.build_scope(decode_params(data), None, state, extensions) in one pass
 * over the raw PARAMS bytes, without the params dict: nginx's 25 params take
 * 1.1 us here against 4.0 us (benchmarks/hotpath.py: 11.1 -> 8.9 us a request).
 * Anything that needs the full rules returns None and the Python path runs:
 * malformed data, a name sent twice, no REQUEST_URI or one not starting with
 * '/', both SCRIPT_NAME and PATH_INFO set by a server other than lighttpd (the
 * root_path rule), an unusual method, a port too long to be one. Only called
 * without --root-path. */
static PyObject *
scope_from_params(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scope_from_params(data, asgi, state, extensions)");
        return NULL;
    }
    speedups_state *st = get_state(module);
    PyObject *asgi = args[1], *state = args[2], *extensions = args[3];
    /* The spans below point into the input: it stays put until input_close
     * whatever code runs meanwhile (state.copy(), a collection's callbacks). */
    input in;
    if (input_open(args[0], &in) < 0) {
        return NULL;
    }
    const char *buf = in.p;
    Py_ssize_t end = in.len, pos = 0;
    span vars[V_COUNT];
    span hnames[MAX_HEADERS], hvalues[MAX_HEADERS];
    int nheaders = 0;
    PyObject *scope = NULL, *headers = NULL;
    PyObject *pairs[MAX_HEADERS]; /* the header list's items, until it is made */
    int npairs = 0;
    for (int i = 0; i < V_COUNT; i++) {
        vars[i].p = NULL;
        vars[i].len = -1;
    }

    /* Pass 1: find the variables and the header params, in order. */
    while (pos < end) {
        Py_ssize_t nlen = read_length((const unsigned char *)buf, end, &pos);
        Py_ssize_t vlen = nlen < 0 ? -1 : read_length((const unsigned char *)buf, end, &pos);
        if (nlen < 0 || vlen < 0 || nlen > end - pos || vlen > end - pos - nlen) {
            goto fallback; /* malformed: the Python path raises the precise error */
        }
        const char *name = buf + pos, *value = buf + pos + nlen;
        pos += nlen + vlen;
        if (nlen > 5 && memcmp(name, "HTTP_", 5) == 0) {
            if (nheaders == MAX_HEADERS) {
                goto fallback;
            }
            for (int i = 0; i < nheaders; i++) {
                if (hnames[i].len == nlen && memcmp(hnames[i].p, name, nlen) == 0) {
                    goto fallback; /* sent twice: dict order and last-wins rules */
                }
            }
            hnames[nheaders].p = name;
            hnames[nheaders].len = nlen;
            hvalues[nheaders].p = value;
            hvalues[nheaders].len = vlen;
            nheaders++;
            continue;
        }
        int v = var_index(name, nlen);
        if (v < 0) {
            continue;
        }
        if (vars[v].len >= 0) {
            goto fallback;
        }
        vars[v].p = value;
        vars[v].len = vlen;
        if (v == V_CONTENT_TYPE || v == V_CONTENT_LENGTH) {
            /* A header too, at this position. */
            if (nheaders == MAX_HEADERS) {
                goto fallback;
            }
            hnames[nheaders].p = name;
            hnames[nheaders].len = nlen;
            hvalues[nheaders].p = value;
            hvalues[nheaders].len = vlen;
            nheaders++;
        }
    }

    /* The path: REQUEST_URI's path part. root_path is "" unless SCRIPT_NAME
     * and PATH_INFO are both set by a server other than lighttpd, whose split
     * is never a mount point (paths._splits_at_next_segment): then the Python
     * rule decides. */
    span uri = vars[V_REQUEST_URI], software = vars[V_SERVER_SOFTWARE];
    int lighttpd = software.len >= 8 && ascii_eq_nocase(software.p, "lighttpd", 8);
    /* A target not starting with '/' may be absolute-form (http://h/a), whose
     * scheme and host the Python rule strips. */
    if (uri.len <= 0 || uri.p[0] != '/' ||
        (vars[V_PATH_INFO].len > 0 && vars[V_SCRIPT_NAME].len > 0 && !lighttpd)) {
        goto fallback;
    }
    span raw_path = {uri.p, uri.len}, query = vars[V_QUERY_STRING];
    const char *qmark = memchr(uri.p, '?', uri.len);
    if (qmark != NULL) {
        raw_path.len = qmark - uri.p;
        if (query.len < 0) {
            query.p = qmark + 1;
            query.len = uri.len - raw_path.len - 1;
        }
    }
    PyObject *method = NULL;
    span m = vars[V_REQUEST_METHOD];
    if (m.len < 0) {
        method = st->method_strs[0];
    } else {
        for (int i = 0; i < N_METHODS; i++) {
            if (span_is(m, method_names[i])) {
                method = st->method_strs[i];
                break;
            }
        }
        if (method == NULL) {
            goto fallback;
        }
    }
    if (port_value(vars[V_REMOTE_PORT]) == -2 || port_value(vars[V_SERVER_PORT]) == -2) {
        goto fallback;
    }

    /* Pass 2: the header list, with scope.request_headers_py's rules. */
    for (int i = 0; i < nheaders; i++) {
        span n = hnames[i], v = hvalues[i];
        PyObject *hname;
        if (n.len == 12 && n.p[0] == 'C') { /* CONTENT_TYPE */
            if (v.len == 0) {
                continue;
            }
            hname = st->h_content_type;
            Py_INCREF(hname);
        } else if (n.len == 14 && n.p[0] == 'C') { /* CONTENT_LENGTH */
            if (!span_digits(v)) {
                continue;
            }
            hname = st->h_content_length;
            Py_INCREF(hname);
        } else {
            if (n.len == 17 && memcmp(n.p + 5, "CONTENT_TYPE", 12) == 0 &&
                vars[V_CONTENT_TYPE].len >= 0) {
                continue;
            }
            if (n.len == 19 && memcmp(n.p + 5, "CONTENT_LENGTH", 14) == 0 &&
                (vars[V_CONTENT_LENGTH].len >= 0 || !span_digits(v))) {
                continue;
            }
            hname = cached_header_name(st, n);
            if (hname == NULL) {
                goto fail;
            }
        }
        PyObject *hvalue = PyBytes_FromStringAndSize(v.p, v.len);
        PyObject *pair = hvalue ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_DECREF(hname);
            Py_XDECREF(hvalue);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, hname);
        PyTuple_SET_ITEM(pair, 1, hvalue);
        pairs[npairs++] = pair;
    }
    headers = PyList_New(npairs);
    if (headers == NULL) {
        goto fail;
    }
    for (int i = 0; i < npairs; i++) {
        PyList_SET_ITEM(headers, i, pairs[i]);
    }
    npairs = 0;

    /* The scope, with the keys in scope.build_scope's order. */
    PyObject *scheme = st->s_http;
    span https = vars[V_HTTPS], rs = vars[V_REQUEST_SCHEME];
    if (span_is_nocase(https, "on") || span_is(https, "1") || span_is_nocase(https, "yes")) {
        scheme = st->s_https;
    } else if (span_is_nocase(rs, "https")) {
        scheme = st->s_https;
    }
    /* Every key is in the template, in order: the sets below replace values. */
    scope = PyDict_Copy(st->scope_templates[(state != Py_None) << 1 | (extensions != Py_None)]);
    if (scope == NULL || PyDict_SetItem(scope, st->k_type, st->s_http) < 0 ||
        PyDict_SetItem(scope, st->k_asgi, asgi) < 0 ||
        set_steal(scope, st->k_http_version, http_version(st, vars[V_SERVER_PROTOCOL])) < 0 ||
        PyDict_SetItem(scope, st->k_method, method) < 0 ||
        PyDict_SetItem(scope, st->k_scheme, scheme) < 0) {
        goto fail;
    }
    if (raw_path.len == 0) {
        if (PyDict_SetItem(scope, st->k_path, st->s_slash) < 0 ||
            PyDict_SetItem(scope, st->k_raw_path, st->b_slash) < 0) {
            goto fail;
        }
    } else if (set_steal(scope, st->k_path, decode_path(raw_path)) < 0 ||
               set_steal(scope, st->k_raw_path, PyBytes_FromStringAndSize(raw_path.p, raw_path.len)) <
                   0) {
        goto fail;
    }
    if ((query.len > 0 ? set_steal(scope, st->k_query_string,
                                   PyBytes_FromStringAndSize(query.p, query.len))
                       : PyDict_SetItem(scope, st->k_query_string, st->b_empty)) < 0 ||
        PyDict_SetItem(scope, st->k_root_path, st->s_empty) < 0 ||
        PyDict_SetItem(scope, st->k_headers, headers) < 0) {
        goto fail;
    }
    Py_CLEAR(headers);
    span ra = vars[V_REMOTE_ADDR];
    if ((ra.len > 0 ? set_steal(scope, st->k_client, client_address(st, ra, vars[V_REMOTE_PORT]))
                    : PyDict_SetItem(scope, st->k_client, Py_None)) < 0) {
        goto fail;
    }
    span host = vars[V_SERVER_ADDR].len > 0 ? vars[V_SERVER_ADDR] : vars[V_SERVER_NAME];
    if ((host.len > 0 ? set_steal(scope, st->k_server, server_address(st, host, vars[V_SERVER_PORT]))
                      : PyDict_SetItem(scope, st->k_server, Py_None)) < 0) {
        goto fail;
    }
    /* state.copy(), as in Python, for any object; a dict's without a lookup. */
    if (state != Py_None &&
        set_steal(scope, st->k_state,
                  PyDict_CheckExact(state) ? PyDict_Copy(state)
                                           : PyObject_CallMethod(state, "copy", NULL)) < 0) {
        goto fail;
    }
    if (extensions != Py_None && PyDict_SetItem(scope, st->k_extensions, extensions) < 0) {
        goto fail;
    }
    input_close(&in);
    return scope;

fallback:
    input_close(&in);
    Py_RETURN_NONE;

fail:
    for (int i = 0; i < npairs; i++) {
        Py_DECREF(pairs[i]);
    }
    Py_XDECREF(headers);
    Py_XDECREF(scope);
    input_close(&in);
    return NULL;
}

/* ---- the access log ---------------------------------------------------------- */

/* Writes the decimal text of an int (exact type) to buf (at least 21 bytes);
 * 0 when it does not fit a long long. By hand: snprintf's format machinery
 * cost more than the rest of the line. */
static int
long_text(PyObject *n, char *buf, Py_ssize_t *len)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    /* Digits of the magnitude, as unsigned: -LLONG_MIN does not fit. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    char digits[20];
    int nd = 0;
    do {
        digits[nd++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    Py_ssize_t k = 0;
    if (v < 0) {
        buf[k++] = '-';
    }
    while (nd) {
        buf[k++] = digits[--nd];
    }
    *len = k;
    return 1;
}

static int
ascii_bytes(PyObject *b)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0, n = PyBytes_GET_SIZE(b); i < n; i++) {
        if (p[i] & 0x80) {
            return 0;
        }
    }
    return 1;
}

#define ASCII_STR(o) (PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o))

/* access_line(scope, status) -> str or None: the line of accesslog.DEFAULT_FORMAT,
 * '{client} - "{method} {target} HTTP/{http_version}" {status}', written
 * straight into one ASCII str. None when a value is not what the gateway
 * puts in a scope (client a (str, int) pair or None; method and
 * http_version str; raw_path and query_string bytes; the scope a dict and
 * the status an int), not ASCII, or a key is missing: an app may replace scope values, and the caller then renders
 * the line in Python (accesslog.render_default_py), which formats anything. */
static PyObject *
render_access_line(speedups_state *st, PyObject *scope, PyObject *status_code)
{
    if (!PyDict_Check(scope) || !PyLong_CheckExact(status_code)) {
        Py_RETURN_NONE;
    }
    PyObject *keys[5] = {st->k_client, st->k_method, st->k_raw_path, st->k_query_string,
                         st->k_http_version};
    PyObject *v[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *result = NULL;
    for (int i = 0; i < 5; i++) {
        /* Owned at once: a later lookup may run a key's __eq__. */
        PyObject *x = PyDict_GetItemWithError(scope, keys[i]);
        if (x == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            goto python;
        }
        v[i] = Py_NewRef(x);
    }
    PyObject *client = v[0], *method = v[1], *raw = v[2], *qs = v[3], *version = v[4];
    const char *host = "-";
    Py_ssize_t host_len = 1, port_len = 0, status_len;
    char port[24], status[24];
    if (client != Py_None) {
        if (!PyTuple_CheckExact(client) || PyTuple_GET_SIZE(client) != 2 ||
            !ASCII_STR(PyTuple_GET_ITEM(client, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(client, 1)) ||
            !long_text(PyTuple_GET_ITEM(client, 1), port, &port_len)) {
            goto python;
        }
        host = (const char *)PyUnicode_DATA(PyTuple_GET_ITEM(client, 0));
        host_len = PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(client, 0));
    }
    if (!ASCII_STR(method) || !ASCII_STR(version) || !PyBytes_CheckExact(raw) ||
        !PyBytes_CheckExact(qs) || !ascii_bytes(raw) || !ascii_bytes(qs) ||
        !long_text(status_code, status, &status_len)) {
        goto python;
    }
    Py_ssize_t method_len = PyUnicode_GET_LENGTH(method), version_len = PyUnicode_GET_LENGTH(version);
    Py_ssize_t raw_len = PyBytes_GET_SIZE(raw), qs_len = PyBytes_GET_SIZE(qs);
    /* Each part is the size of an object in memory: the sum cannot overflow. */
    Py_ssize_t total = host_len + (port_len ? 1 + port_len : 0) + 4 + method_len + 1 + raw_len +
                       (qs_len ? 1 + qs_len : 0) + 6 + version_len + 2 + status_len;
    result = PyUnicode_New(total, 127);
    if (result == NULL) {
        goto done;
    }
    char *o = (char *)PyUnicode_DATA(result);
#define PUT(p, n) (memcpy(o, (p), (size_t)(n)), o += (n))
    PUT(host, host_len);
    if (port_len) {
        *o++ = ':';
        PUT(port, port_len);
    }
    PUT(" - \"", 4);
    PUT(PyUnicode_DATA(method), method_len);
    *o++ = ' ';
    PUT(PyBytes_AS_STRING(raw), raw_len);
    if (qs_len) {
        *o++ = '?';
        PUT(PyBytes_AS_STRING(qs), qs_len);
    }
    PUT(" HTTP/", 6);
    PUT(PyUnicode_DATA(version), version_len);
    PUT("\" ", 2);
    PUT(status, status_len);
#undef PUT
    goto done;
python:
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 5; i++) {
        Py_XDECREF(v[i]);
    }
    return result;
}

static PyObject *
access_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "access_line(scope: dict, status: int)");
        return NULL;
    }
    return render_access_line(get_state(module), args[0], args[1]);
}

/* The access logger's fixed parts, a tuple: the handler's pending lines (a
 * list), grew(n), the Python log for lines C does not render, the largest
 * batch, and this module (for its state). */
enum { AL_PENDING, AL_GREW, AL_FALLBACK, AL_MAX, AL_MODULE, AL_SIZE };

/* log(scope, status, sent, duration, request_id): the default line rendered
 * and queued in the handler's pending list, and grew(n) called when the list
 * becomes a batch (n == 1: schedule its write) or full (n >= the largest: write
 * now), as BufferedLineHandler._add does; a line C does not render goes to the
 * Python log with all five arguments. One C call where Python made two. */
static PyObject *
access_log_call(PyObject *parts, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "log(scope, status, sent, duration, request_id)");
        return NULL;
    }
    PyObject *module = PyTuple_GET_ITEM(parts, AL_MODULE);
    PyObject *line = render_access_line(get_state(module), args[0], args[1]);
    if (line == NULL) {
        return NULL;
    }
    if (line == Py_None) {
        Py_DECREF(line);
        return PyObject_Vectorcall(PyTuple_GET_ITEM(parts, AL_FALLBACK), args, (size_t)nargs, NULL);
    }
    PyObject *pending = PyTuple_GET_ITEM(parts, AL_PENDING);
    int rc = PyList_Append(pending, line);
    Py_DECREF(line);
    if (rc < 0) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(pending);
    if (n == 1 || n >= PyLong_AsSsize_t(PyTuple_GET_ITEM(parts, AL_MAX))) {
        PyObject *count = PyLong_FromSsize_t(n);
        PyObject *r = count ? PyObject_CallOneArg(PyTuple_GET_ITEM(parts, AL_GREW), count) : NULL;
        Py_XDECREF(count);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyMethodDef access_log_def = {
    "log", (PyCFunction)(void (*)(void))access_log_call, METH_FASTCALL,
    "log(scope, status, sent, duration, request_id): queue the request's default access line."};

/* access_logger(pending, grew, fallback, max_pending) -> log */
static PyObject *
access_logger(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyCallable_Check(args[1]) ||
        !PyCallable_Check(args[2]) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "access_logger(pending: list, grew, fallback, max_pending: int)");
        return NULL;
    }
    Py_ssize_t max = PyLong_AsSsize_t(args[3]);
    if (max < 1) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "max_pending must be at least 1");
        }
        return NULL;
    }
    PyObject *parts = PyTuple_Pack(AL_SIZE, args[0], args[1], args[2], args[3], module);
    if (parts == NULL) {
        return NULL;
    }
    PyObject *log = PyCFunction_NewEx(&access_log_def, parts, NULL);
    Py_DECREF(parts);
    return log;
}

/* ---- RequestCore: a request's state, and the fast path of its response ----- */

static struct PyModuleDef module_def;

/* The largest body sent with its head as one small whole response
 * (protocol/request.py _COALESCE_LIMIT). */
#define WHOLE_BODY_LIMIT (16 << 10)

/* Every field of protocol/request.py's Request (and the ASGI bridge's two),
 * here so that __init__ sets them in one C call and send_fast() reads and
 * writes them directly. Each is an object, as a __slots__ entry is: Python
 * reads them at the speed of its own slots (CPython specializes attribute
 * access for object members only). NULL until set; all PyObject * in a row
 * (traverse and clear walk them as an array). */
typedef struct {
    PyObject_HEAD
    /* The thread that opened the request: its loop's. send() does the fast
     * path only there (an app may call send() in another thread and hand the
     * result to run_coroutine_threadsafe). Not an object: before conn. */
    unsigned long loop_thread;
    PyObject *conn, *request_id, *unsent_head, *status, *bytes_sent, *response_started,
        *response_complete, *disconnected, *head_only, *stdin_done, *end_held, *stdout_sent,
        *waiters;
    PyObject *keep_conn, *params, *scope, *body, *body_size, *end_pending, *stdin_seen,
        *end_deadline, *ended, *started, *bytes_received, *timed_out, *timeout, *unyielded,
        *drain_waiter, *task, *final_sent, *app_error;
} RequestCore;

#define N_CORE_FIELDS ((sizeof(RequestCore) - offsetof(RequestCore, conn)) / sizeof(PyObject *))

static PyObject **
core_fields(RequestCore *self)
{
    return &self->conn;
}

#define CORE_MEMBER(field, name) \
    {name, T_OBJECT_EX, offsetof(RequestCore, field), 0, NULL}

static PyMemberDef core_members[] = {
    CORE_MEMBER(conn, "conn"),
    CORE_MEMBER(request_id, "request_id"),
    CORE_MEMBER(unsent_head, "unsent_head"),
    CORE_MEMBER(status, "status"),
    CORE_MEMBER(bytes_sent, "bytes_sent"),
    CORE_MEMBER(response_started, "response_started"),
    CORE_MEMBER(response_complete, "response_complete"),
    CORE_MEMBER(disconnected, "disconnected"),
    CORE_MEMBER(head_only, "head_only"),
    CORE_MEMBER(stdin_done, "stdin_done"),
    CORE_MEMBER(end_held, "end_held"),
    CORE_MEMBER(stdout_sent, "_stdout_sent"),
    CORE_MEMBER(waiters, "_waiters"),
    CORE_MEMBER(keep_conn, "keep_conn"),
    CORE_MEMBER(params, "params"),
    CORE_MEMBER(scope, "scope"),
    CORE_MEMBER(body, "body"),
    CORE_MEMBER(body_size, "body_size"),
    CORE_MEMBER(end_pending, "end_pending"),
    CORE_MEMBER(stdin_seen, "_stdin_seen"),
    CORE_MEMBER(end_deadline, "_end_deadline"),
    CORE_MEMBER(ended, "ended"),
    CORE_MEMBER(started, "started"),
    CORE_MEMBER(bytes_received, "bytes_received"),
    CORE_MEMBER(timed_out, "timed_out"),
    CORE_MEMBER(timeout, "_timeout"),
    CORE_MEMBER(unyielded, "_unyielded"),
    CORE_MEMBER(drain_waiter, "drain_waiter"),
    CORE_MEMBER(task, "task"),
    CORE_MEMBER(final_sent, "_final_sent"),
    CORE_MEMBER(app_error, "app_error"),
    {NULL, 0, 0, 0, NULL},
};

/* GC support of a type whose object fields are n PyObject * in a row. */
static int
fields_traverse(PyObject *op, PyObject **fields, size_t n, visitproc visit, void *arg)
{
    for (size_t i = 0; i < n; i++) {
        Py_VISIT(fields[i]);
    }
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static void
fields_clear(PyObject **fields, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        Py_CLEAR(fields[i]);
    }
}

static void
fields_dealloc(PyObject *op, inquiry clear)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static int
core_traverse(PyObject *op, visitproc visit, void *arg)
{
    return fields_traverse(op, core_fields((RequestCore *)op), N_CORE_FIELDS, visit, arg);
}

static int
core_clear(PyObject *op)
{
    fields_clear(core_fields((RequestCore *)op), N_CORE_FIELDS);
    return 0;
}

static void
core_dealloc(PyObject *op)
{
    fields_dealloc(op, core_clear);
}

/* RequestCore(conn, request_id, keep_conn): a request as the connection opens
 * it (protocol/core.py RequestCorePy.__init__ is the Python version): its
 * params still to come, no body yet, nothing sent, started now by the
 * connection's loop clock. */
static int
core_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    RequestCore *self = (RequestCore *)op;
    PyObject *conn, *request_id, *keep_conn;
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) || !PyTuple_Check(args) ||
        PyTuple_GET_SIZE(args) != 3) {
        PyErr_SetString(PyExc_TypeError, "RequestCore(conn, request_id, keep_conn)");
        return -1;
    }
    conn = PyTuple_GET_ITEM(args, 0);
    request_id = PyTuple_GET_ITEM(args, 1);
    keep_conn = PyTuple_GET_ITEM(args, 2);
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(op), &module_def);
    if (module == NULL) {
        return -1;
    }
    speedups_state *st = get_state(module);
    PyObject *loop = NULL, *started = NULL, *body = NULL, *waiters = NULL;
    if ((loop = PyObject_GetAttr(conn, st->k_loop)) == NULL ||
        (started = PyObject_CallMethodNoArgs(loop, st->k_time)) == NULL ||
        (body = PyList_New(0)) == NULL || (waiters = PyList_New(0)) == NULL) {
        Py_XDECREF(loop);
        Py_XDECREF(started);
        Py_XDECREF(body);
        return -1;
    }
    Py_DECREF(loop);
    /* Set in one go, nothing that runs Python code in between; what a second
     * __init__ replaces is released after. */
    PyObject *old[N_CORE_FIELDS];
    PyObject **fields = core_fields(self);
    memcpy(old, fields, sizeof(old));
    self->loop_thread = PyThread_get_thread_ident();
    PyObject *no = Py_False, *none = Py_None, *zero = st->zero, *zero_f = st->zero_float;
    self->conn = Py_NewRef(conn);
    self->request_id = Py_NewRef(request_id);
    self->unsent_head = Py_NewRef(none);
    self->status = Py_NewRef(zero);
    self->bytes_sent = Py_NewRef(zero);
    self->response_started = Py_NewRef(no);
    self->response_complete = Py_NewRef(no);
    self->disconnected = Py_NewRef(no);
    self->head_only = Py_NewRef(no);
    self->stdin_done = Py_NewRef(no);
    self->end_held = Py_NewRef(no);
    self->stdout_sent = Py_NewRef(no);
    self->waiters = waiters;
    self->keep_conn = Py_NewRef(keep_conn);
    self->params = Py_NewRef(st->b_empty);
    self->scope = Py_NewRef(none);
    self->body = body;
    self->body_size = Py_NewRef(zero);
    self->end_pending = Py_NewRef(no);
    self->stdin_seen = Py_NewRef(zero_f);
    self->end_deadline = Py_NewRef(zero_f);
    self->ended = Py_NewRef(no);
    self->started = started;
    self->bytes_received = Py_NewRef(zero);
    self->timed_out = Py_NewRef(no);
    self->timeout = Py_NewRef(none);
    self->unyielded = Py_NewRef(zero);
    self->drain_waiter = Py_NewRef(none);
    self->task = Py_NewRef(none);
    self->final_sent = Py_NewRef(no);
    self->app_error = Py_NewRef(none);
    for (size_t i = 0; i < N_CORE_FIELDS; i++) {
        Py_XDECREF(old[i]);
    }
    return 0;
}

/* An exact str equal to the ASCII literal lit. */
static int
str_is(PyObject *o, const char *lit, Py_ssize_t n)
{
    return PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o) && PyUnicode_GET_LENGTH(o) == n &&
           memcmp(PyUnicode_DATA(o), lit, (size_t)n) == 0;
}

/* message[key] as a new reference; NULL when absent or when the lookup failed
 * (a key's __eq__ raised: the error is dropped, the Python path meets it again). */
static PyObject *
get_owned(PyObject *message, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(message, key);
    if (v == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return Py_NewRef(v);
}

static void
set_field(PyObject **field, PyObject *value)
{
    Py_XSETREF(*field, Py_NewRef(value));
}

/* http.response.start: what ASGIRequest.send() and Request.set_head() do for
 * a plain start (no trailers, a known status, headers encode_head takes as
 * they are, the client still there). 1 done, 0 not taken, -1 error. */
static int
core_start(RequestCore *self, speedups_state *st, PyObject *message)
{
    if (self->response_started != Py_False || self->disconnected != Py_False ||
        self->conn == NULL || st->status_lines == NULL) {
        return 0;
    }
    PyObject *trailers = get_owned(message, st->k_trailers);
    if (trailers != NULL) {
        Py_DECREF(trailers); /* compared by identity only */
        if (trailers != Py_False) {
            return 0;
        }
    }
    PyObject *status = get_owned(message, st->k_status);
    if (status == NULL) {
        return 0;
    }
    PyObject *headers = get_owned(message, st->k_headers);
    if (headers == NULL) {
        headers = Py_NewRef(st->empty_tuple);
    }
    PyObject *head = NULL, *ctx = NULL, *pending = NULL, *due = NULL, *conn = NULL;
    int done = 0;
    if (!PyLong_CheckExact(status)) {
        goto out;
    }
    /* An exact int key: the lookup runs no Python code. */
    PyObject *line = PyDict_GetItemWithError(st->status_lines, status);
    if (line == NULL || !PyBytes_CheckExact(line)) {
        PyErr_Clear();
        goto out;
    }
    head = encode_head_impl(line, headers);
    if (head == NULL) {
        done = -1;
        goto out;
    }
    if (head == Py_None) {
        goto out;
    }
    conn = Py_NewRef(self->conn);
    set_field(&self->end_held, Py_False);
    Py_XSETREF(self->unsent_head, head);
    head = NULL;
    set_field(&self->status, status);
    set_field(&self->response_started, Py_True);
    done = 1;
    /* Written at the end of the loop turn unless a body comes first:
     * ctx.pending_heads.append(self), and ctx.at_turn_end(conn.loop) once a turn. */
    if ((ctx = PyObject_GetAttr(conn, st->k_ctx)) == NULL ||
        (pending = PyObject_GetAttr(ctx, st->k_pending_heads)) == NULL) {
        done = -1;
        goto out;
    }
    if (!PyList_CheckExact(pending)) {
        PyErr_SetString(PyExc_TypeError, "ctx.pending_heads is not a list");
        done = -1;
        goto out;
    }
    if (PyList_Append(pending, (PyObject *)self) < 0 ||
        (due = PyObject_GetAttr(ctx, st->k_turn_end_due)) == NULL) {
        done = -1;
        goto out;
    }
    if (due != Py_True) {
        PyObject *loop = PyObject_GetAttr(conn, st->k_loop);
        PyObject *r = loop ? PyObject_CallMethodOneArg(ctx, st->k_at_turn_end, loop) : NULL;
        Py_XDECREF(loop);
        if (r == NULL) {
            done = -1;
            goto out;
        }
        Py_DECREF(r);
    }
out:
    Py_XDECREF(head);
    Py_XDECREF(due);
    Py_XDECREF(pending);
    Py_XDECREF(ctx);
    Py_XDECREF(conn);
    Py_DECREF(headers);
    Py_DECREF(status);
    return done;
}

/* http.response.body, the last one, of a response small enough to go whole:
 * what ASGIRequest.send() and Request.send_whole() do. 1 done, 0 not taken,
 * -1 error. */
static int
core_body(RequestCore *self, speedups_state *st, PyObject *message)
{
    if (self->disconnected != Py_False || self->response_started != Py_True ||
        self->response_complete != Py_False || self->stdin_done != Py_True ||
        self->end_held != Py_False || self->conn == NULL || self->unsent_head == NULL ||
        !PyBytes_CheckExact(self->unsent_head) || self->request_id == NULL ||
        !PyLong_CheckExact(self->request_id) || self->bytes_sent == NULL ||
        !PyLong_CheckExact(self->bytes_sent)) {
        return 0;
    }
    PyObject *more = get_owned(message, st->k_more_body);
    if (more != NULL) {
        Py_DECREF(more); /* compared by identity only */
        if (more != Py_False) {
            return 0;
        }
    }
    PyObject *body = get_owned(message, st->k_body);
    if (body == NULL) {
        body = Py_NewRef(st->b_empty);
    }
    PyObject *head = Py_NewRef(self->unsent_head), *conn = NULL, *data = NULL, *r = NULL;
    PyObject *sent = NULL;
    int done = 0;
    if (!PyBytes_CheckExact(body)) {
        goto out;
    }
    if (self->head_only == Py_True) {
        Py_SETREF(body, Py_NewRef(st->b_empty)); /* and not counted as sent */
    }
    Py_ssize_t blen = PyBytes_GET_SIZE(body), hlen = PyBytes_GET_SIZE(head);
    int overflow, overflow_sent;
    long rid = PyLong_AsLongAndOverflow(self->request_id, &overflow);
    long long already = PyLong_AsLongLongAndOverflow(self->bytes_sent, &overflow_sent);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        goto out;
    }
    if (overflow || overflow_sent || rid < 0 || rid > 0xFFFF || blen > WHOLE_BODY_LIMIT || hlen > 0xFFFF - blen ||
        already < 0 || already > (1LL << 62)) {
        goto out;
    }
    if ((data = whole_response_impl(rid, head, body)) == NULL ||
        (sent = PyLong_FromLongLong(already + blen)) == NULL) {
        done = -1;
        goto out;
    }
    conn = Py_NewRef(self->conn);
    set_field(&self->unsent_head, Py_None);
    Py_XSETREF(self->bytes_sent, sent);
    set_field(&self->stdout_sent, Py_True);
    set_field(&self->response_complete, Py_True);
    done = 1;
    if ((r = PyObject_CallMethodOneArg(conn, st->k_write_last, data)) == NULL) {
        done = -1;
        goto out;
    }
    Py_DECREF(r);
    if ((r = PyObject_CallMethodOneArg(conn, st->k_request_ended, (PyObject *)self)) == NULL) {
        done = -1;
        goto out;
    }
    Py_DECREF(r);
    /* Coroutines waiting (a disconnect watcher) learn that the response is sent. */
    PyObject *waiters = self->waiters;
    if (waiters != NULL && (!PyList_CheckExact(waiters) || PyList_GET_SIZE(waiters) > 0)) {
        if ((r = PyObject_CallMethodNoArgs((PyObject *)self, st->k_wake)) == NULL) {
            done = -1;
            goto out;
        }
        Py_DECREF(r);
    }
out:
    Py_XDECREF(data);
    Py_XDECREF(conn);
    Py_DECREF(head);
    Py_DECREF(body);
    return done;
}

/* The message, if send_fast() takes it, done: 1 done, 0 not taken, -1 error. */
static int
core_fast(RequestCore *self, speedups_state *st, PyObject *message)
{
    if (!PyDict_CheckExact(message)) {
        return 0;
    }
    PyObject *mtype = get_owned(message, st->k_type);
    if (mtype == NULL) {
        return 0;
    }
    int done = 0;
    if (str_is(mtype, "http.response.body", 18)) {
        done = core_body(self, st, message);
    } else if (str_is(mtype, "http.response.start", 19)) {
        done = core_start(self, st, message);
    }
    Py_DECREF(mtype);
    return done;
}

/* send_fast(message) -> bool: the ASGI send() of a plain response start, or of
 * the last body of a small response (with its head, the empty STDOUT and
 * END_REQUEST, in one write), done here; False, with nothing done, for any
 * other message or state: the caller then takes the Python path
 * (ASGIRequest.asgi_send), which also raises every error. An error from the
 * connection's own methods, called as the Python path calls them, propagates. */
static PyObject *
core_send_fast(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
               Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "send_fast(message)");
        return NULL;
    }
    speedups_state *st = (speedups_state *)PyType_GetModuleState(defining_class);
    if (st == NULL) {
        Py_RETURN_FALSE;
    }
    int done = core_fast((RequestCore *)op, st, args[0]);
    if (done < 0) {
        return NULL;
    }
    return PyBool_FromLong(done);
}

/* 1 when type(op).send_fast is RequestCore's own: a subclass that overrides
 * it (an authorizer's, which rewrites headers) declines the fast path. */
static int
core_fast_path_allowed(PyObject *op, speedups_state *st)
{
    /* The type attribute cache answers this lookup without a dict probe. */
    PyObject *own = _PyType_Lookup((PyTypeObject *)st->core_type, st->k_send_fast);
    return own != NULL && _PyType_Lookup(Py_TYPE(op), st->k_send_fast) == own;
}

/* send(message) -> awaitable: the ASGI send. A message send_fast() takes is
 * done now, and a finished awaitable comes back (no coroutine is made, run
 * and freed); any other goes to self.asgi_send(message), the coroutine of the
 * Python path, as does every message sent from a thread other than the
 * loop's: the coroutine then runs where it is awaited. An error from the fast
 * path is raised here, at the call. */
static PyObject *
core_send(PyObject *op, PyTypeObject *defining_class, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames)
{
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "send(message)");
        return NULL;
    }
    speedups_state *st = (speedups_state *)PyType_GetModuleState(defining_class);
    if (st == NULL) {
        return NULL;
    }
    PyObject *message = args[0];
    if (((RequestCore *)op)->loop_thread == PyThread_get_thread_ident() &&
        core_fast_path_allowed(op, st)) {
        int done = core_fast((RequestCore *)op, st, message);
        if (done < 0) {
            return NULL;
        }
        if (done) {
            return Py_NewRef(st->sent);
        }
    }
    return PyObject_CallMethodOneArg(op, st->k_asgi_send, message);
}

static PyMethodDef core_methods[] = {
    {"send_fast", (PyCFunction)(void (*)(void))core_send_fast,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "Send a plain response start or a small response's last body here; False if not taken."},
    {"send", (PyCFunction)(void (*)(void))core_send, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "ASGI send: a message send_fast() takes is done now and a finished awaitable returned; "
     "any other returns self.asgi_send(message)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot core_slots[] = {
    {Py_tp_doc, "The fields of a request's response that send_fast() reads and writes."},
    {Py_tp_members, core_members},
    {Py_tp_init, core_init},
    {Py_tp_methods, core_methods},
    {Py_tp_traverse, core_traverse},
    {Py_tp_clear, core_clear},
    {Py_tp_dealloc, core_dealloc},
    {0, NULL},
};

static PyType_Spec core_spec = {
    .name = "fcgi_asgi._speedups.RequestCore",
    .basicsize = sizeof(RequestCore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = core_slots,
};

/* ---- ConnectionCore: a connection's per-request steps ---------------------- */

/* The fields of protocol/conn_core.py's ConnectionCorePy, as members, and
 * its three steps in C: data_received() for a read holding one whole request
 * alone on its connection, write_last() and request_ended(). Whatever else
 * they meet goes to the connection's Python methods, as the Python version
 * calls them. All PyObject * in a row (traverse and clear walk them). */
typedef struct {
    PyObject_HEAD
    PyObject *close_when_idle, *held, *hold, *idle_since, *linger_id, *max_params_size,
        *multiplexed, *on_idle, *params_buffered, *served_any, *unparsed, *closing, *ctx, *loop,
        *requests, *requests_begun, *transport, *write_paused;
} ConnectionCore;

#define N_CONN_FIELDS \
    ((sizeof(ConnectionCore) - offsetof(ConnectionCore, close_when_idle)) / sizeof(PyObject *))

static PyObject **
conn_fields(ConnectionCore *self)
{
    return &self->close_when_idle;
}

#define CONN_MEMBER(field, name) \
    {name, T_OBJECT_EX, offsetof(ConnectionCore, field), 0, NULL}

static PyMemberDef conn_members[] = {
    CONN_MEMBER(close_when_idle, "_close_when_idle"),
    CONN_MEMBER(held, "_held"),
    CONN_MEMBER(hold, "_hold"),
    CONN_MEMBER(idle_since, "_idle_since"),
    CONN_MEMBER(linger_id, "_linger_id"),
    CONN_MEMBER(max_params_size, "_max_params_size"),
    CONN_MEMBER(multiplexed, "_multiplexed"),
    CONN_MEMBER(on_idle, "_on_idle"),
    CONN_MEMBER(params_buffered, "_params_buffered"),
    CONN_MEMBER(served_any, "_served_any"),
    CONN_MEMBER(unparsed, "_unparsed"),
    CONN_MEMBER(closing, "closing"),
    CONN_MEMBER(ctx, "ctx"),
    CONN_MEMBER(loop, "loop"),
    CONN_MEMBER(requests, "requests"),
    CONN_MEMBER(requests_begun, "requests_begun"),
    CONN_MEMBER(transport, "transport"),
    CONN_MEMBER(write_paused, "write_paused"),
    {NULL, 0, 0, 0, NULL},
};

static int
conn_traverse(PyObject *op, visitproc visit, void *arg)
{
    return fields_traverse(op, conn_fields((ConnectionCore *)op), N_CONN_FIELDS, visit, arg);
}

static int
conn_clear(PyObject *op)
{
    fields_clear(conn_fields((ConnectionCore *)op), N_CONN_FIELDS);
    return 0;
}

static void
conn_dealloc(PyObject *op)
{
    fields_dealloc(op, conn_clear);
}

/* Every field set (FastCGIConnection.__init__ sets them all); else an error. */
static int
conn_check(ConnectionCore *self)
{
    PyObject **fields = conn_fields(self);
    for (size_t i = 0; i < N_CONN_FIELDS; i++) {
        if (fields[i] == NULL) {
            PyErr_Format(PyExc_AttributeError, "%s: field %s not set", Py_TYPE(self)->tp_name,
                         conn_members[i].name);
            return -1;
        }
    }
    return 0;
}

/* o's truth, as Python's `if o:`; -1 on error. */
static inline int
truth(PyObject *o)
{
    if (o == Py_True) {
        return 1;
    }
    if (o == Py_False || o == Py_None) {
        return 0;
    }
    Py_INCREF(o); /* its __bool__ or __len__ may drop the field's reference */
    int r = PyObject_IsTrue(o);
    Py_DECREF(o);
    return r;
}

/* A Py_ssize_t from an exact int field; -1 (error cleared) for anything else. */
static Py_ssize_t
field_size(PyObject *o)
{
    if (o == NULL || !PyLong_CheckExact(o)) {
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(o);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    return v;
}

/* The pending exception as one object (NULL when none), cleared. */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static void
restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* records.ProtocolError, imported on first need (records.py imports us). */
static PyObject *
protocol_error_class(speedups_state *st)
{
    if (st->protocol_error == NULL) {
        PyObject *records = PyImport_ImportModule("fcgi_asgi.protocol.records");
        if (records == NULL) {
            return NULL;
        }
        st->protocol_error = PyObject_GetAttrString(records, "ProtocolError");
        Py_DECREF(records);
    }
    return st->protocol_error;
}

/* The lone request of packet (rid, flags, params, body), opened and started
 * as ConnectionCorePy.data_received does: 1 done, 0 not alone here (nothing
 * done: the general path takes it), -1 error. */
static int
conn_open_lone(ConnectionCore *self, speedups_state *st, PyObject *packet)
{
    if (!PyTuple_CheckExact(packet) || PyTuple_GET_SIZE(packet) != 4) {
        return 0;
    }
    PyObject *rid = PyTuple_GET_ITEM(packet, 0), *flags = PyTuple_GET_ITEM(packet, 1);
    PyObject *params = PyTuple_GET_ITEM(packet, 2), *body = PyTuple_GET_ITEM(packet, 3);
    if (!PyBytes_CheckExact(params) || !PyBytes_CheckExact(body) || !PyLong_CheckExact(flags) ||
        !PyDict_CheckExact(self->requests) || PyDict_GET_SIZE(self->requests) != 0 ||
        self->linger_id != Py_None) {
        return 0;
    }
    Py_ssize_t buffered = field_size(self->params_buffered);
    Py_ssize_t limit = field_size(self->max_params_size);
    Py_ssize_t begun = field_size(self->requests_begun);
    if (buffered < 0 || limit < 0 || begun < 0 || begun == PY_SSIZE_T_MAX ||
        buffered > limit - PyBytes_GET_SIZE(params)) {
        return 0;
    }
    long fl = PyLong_AsLong(flags);
    if (fl == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    PyObject *keep_conn = (fl & 1) ? Py_True : Py_False; /* FCGI_KEEP_CONN */
    PyObject *count = PyLong_FromSsize_t(begun + 1);
    if (count == NULL) {
        return -1;
    }
    if (keep_conn == Py_False) {
        set_field(&self->hold, Py_False);
    }
    Py_XSETREF(self->requests_begun, count);
    PyObject *cls = PyObject_GetAttr(self->ctx, st->k_request_class);
    if (cls == NULL) {
        return -1;
    }
    PyObject *argv[3] = {(PyObject *)self, rid, keep_conn};
    PyObject *lone = PyObject_Vectorcall(cls, argv, 3, NULL);
    Py_DECREF(cls);
    if (lone == NULL) {
        return -1;
    }
    int done = -1;
    PyObject *requests = Py_NewRef(self->requests), *r = NULL;
    if (PyObject_SetItem(requests, rid, lone) < 0) {
        goto out;
    }
    set_field(&self->idle_since, Py_None);
    if (PyObject_TypeCheck(lone, (PyTypeObject *)st->core_type)) {
        set_field(&((RequestCore *)lone)->params, Py_None);
    } else if (PyObject_SetAttr(lone, st->k_params, Py_None) < 0) {
        goto out;
    }
    if (PyBytes_GET_SIZE(body) > 0) {
        if ((r = PyObject_CallMethodOneArg(lone, st->k_feed_body, body)) == NULL) {
            goto out;
        }
        Py_CLEAR(r);
    }
    if (PyObject_TypeCheck(lone, (PyTypeObject *)st->core_type)) {
        set_field(&((RequestCore *)lone)->stdin_done, Py_True);
    } else if (PyObject_SetAttr(lone, st->k_stdin_done, Py_True) < 0) {
        goto out;
    }
    if ((r = PyObject_CallMethodOneArg(lone, st->k_start, params)) == NULL) {
        /* A ProtocolError (malformed params) fails the connection, as in Python. */
        PyObject *exc = take_exception();
        PyObject *cls_error = exc != NULL ? protocol_error_class(st) : NULL;
        if (cls_error == NULL) {
            if (exc != NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(exc); /* the import's error replaces it */
                } else {
                    restore_exception(exc);
                }
            }
            goto out;
        }
        int is = PyObject_IsInstance(exc, cls_error);
        if (is <= 0) {
            if (is == 0) {
                restore_exception(exc);
            } else {
                Py_DECREF(exc);
            }
            goto out;
        }
        r = PyObject_CallMethodOneArg((PyObject *)self, st->k_protocol_failed, exc);
        Py_DECREF(exc);
        if (r == NULL) {
            goto out;
        }
        Py_CLEAR(r);
        done = 1;
        goto out;
    }
    Py_CLEAR(r);
    if (self->write_paused != NULL && self->write_paused != Py_False) {
        int paused = truth(self->write_paused);
        if (paused < 0) {
            goto out;
        }
        if (paused) {
            if ((r = PyObject_CallMethodNoArgs((PyObject *)self, st->k_check_write_backlog)) ==
                NULL) {
                goto out;
            }
            Py_CLEAR(r);
        }
    }
    done = 1;
out:
    Py_DECREF(requests);
    Py_DECREF(lone);
    return done;
}

/* data_received(data): see ConnectionCorePy.data_received. */
static PyObject *
conn_data_received(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                   Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "data_received(data)");
        return NULL;
    }
    ConnectionCore *self = (ConnectionCore *)op;
    PyObject *module = PyType_GetModule(defining_class);
    if (module == NULL || conn_check(self) < 0) {
        return NULL;
    }
    speedups_state *st = get_state(module);
    PyObject *data = args[0];
    int partial = PyByteArray_CheckExact(self->unparsed) ? PyByteArray_GET_SIZE(self->unparsed) != 0
                                                          : truth(self->unparsed);
    if (partial < 0) {
        return NULL;
    }
    if (partial) {
        return PyObject_CallMethodOneArg(op, st->k_records_received, data);
    }
    PyObject *packets = request_packets(module, data);
    if (packets == NULL) {
        return NULL;
    }
    if (packets == Py_None) {
        Py_DECREF(packets);
        return PyObject_CallMethodOneArg(op, st->k_records_received, data);
    }
    if (PyList_CheckExact(packets) && PyList_GET_SIZE(packets) == 1) {
        PyObject *packet = Py_NewRef(PyList_GET_ITEM(packets, 0));
        int done = conn_check(self) < 0 ? -1 : conn_open_lone(self, st, packet);
        Py_DECREF(packet);
        if (done != 0) {
            Py_DECREF(packets);
            return done < 0 ? NULL : Py_NewRef(Py_None);
        }
    }
    PyObject *r = PyObject_CallMethodOneArg(op, st->k_packets_received, packets);
    Py_DECREF(packets);
    return r;
}

/* write_last(data): see ConnectionCorePy.write_last. */
static PyObject *
conn_write_last(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "write_last(data)");
        return NULL;
    }
    ConnectionCore *self = (ConnectionCore *)op;
    speedups_state *st = (speedups_state *)PyType_GetModuleState(defining_class);
    if (st == NULL || conn_check(self) < 0) {
        return NULL;
    }
    PyObject *data = args[0];
    int shared = truth(self->multiplexed);
    if (shared == 0) {
        shared = PyList_CheckExact(self->held) ? PyList_GET_SIZE(self->held) != 0
                                                : truth(self->held);
    }
    if (shared < 0) {
        return NULL;
    }
    if (shared) {
        PyObject *pieces = PyList_New(1);
        if (pieces == NULL) {
            return NULL;
        }
        PyList_SET_ITEM(pieces, 0, Py_NewRef(data));
        PyObject *r = PyObject_CallMethodOneArg(op, st->k_write, pieces);
        Py_DECREF(pieces);
        return r;
    }
    if (self->transport == NULL || self->transport == Py_None) {
        Py_RETURN_NONE;
    }
    int closing = truth(self->closing);
    if (closing != 0) {
        return closing < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *transport = Py_NewRef(self->transport);
    PyObject *r = PyObject_CallMethodOneArg(transport, st->k_write, data);
    Py_DECREF(transport);
    return r;
}

/* request_ended(cycle): see ConnectionCorePy.request_ended. Unlike it, this
 * takes only a RequestCore (every request class is one) and a connection
 * whose requests are a dict (FastCGIConnection's always are): TypeError. */
static PyObject *
conn_request_ended(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                   Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "request_ended(cycle)");
        return NULL;
    }
    ConnectionCore *self = (ConnectionCore *)op;
    speedups_state *st = (speedups_state *)PyType_GetModuleState(defining_class);
    if (st == NULL || conn_check(self) < 0) {
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], (PyTypeObject *)st->core_type)) {
        PyErr_SetString(PyExc_TypeError, "request_ended(cycle): cycle must be a RequestCore");
        return NULL;
    }
    RequestCore *cycle = (RequestCore *)Py_NewRef(args[0]);
    PyObject *ctx = Py_NewRef(self->ctx), *requests = Py_NewRef(self->requests);
    PyObject *stats = NULL, *served = NULL, *retire_at = NULL, *rid = NULL, *r = NULL;
    PyObject *result = NULL;
    set_field(&cycle->ended, Py_True);
    /* ctx.count_served(), inline */
    if ((stats = PyObject_GetAttr(ctx, st->k_stats)) == NULL ||
        (r = PyObject_GetAttr(stats, st->k_requests_served)) == NULL) {
        goto out;
    }
    served = PyNumber_Add(r, st->one);
    Py_CLEAR(r);
    if (served == NULL || PyObject_SetAttr(stats, st->k_requests_served, served) < 0 ||
        (retire_at = PyObject_GetAttr(ctx, st->k_retire_at)) == NULL) {
        goto out;
    }
    int retire = PyObject_RichCompareBool(served, retire_at, Py_EQ);
    if (retire < 0) {
        goto out;
    }
    if (retire) {
        PyObject *on_retire = PyObject_GetAttr(ctx, st->k_on_retire);
        if (on_retire == NULL) {
            goto out;
        }
        if (on_retire != Py_None) {
            r = PyObject_CallNoArgs(on_retire);
        } else {
            r = Py_NewRef(Py_None);
        }
        Py_DECREF(on_retire);
        if (r == NULL) {
            goto out;
        }
        Py_CLEAR(r);
    }
    if (cycle->request_id == NULL) {
        PyErr_SetString(PyExc_AttributeError, "request_id");
        goto out;
    }
    rid = Py_NewRef(cycle->request_id);
    if (PyDict_CheckExact(requests)) {
        PyObject *cur = PyDict_GetItemWithError(requests, rid);
        if (cur == NULL && PyErr_Occurred()) {
            goto out;
        }
        if (cur == (PyObject *)cycle && PyDict_DelItem(requests, rid) < 0) {
            goto out;
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "requests must be a dict");
        goto out;
    }
    if (cycle->params != NULL && cycle->params != Py_None) { /* aborted before its PARAMS ended */
        if ((r = PyObject_CallMethodOneArg(op, st->k_forget_params, (PyObject *)cycle)) == NULL) {
            goto out;
        }
        Py_CLEAR(r);
    }
    if (PyDict_GET_SIZE(requests) == 0) {
        PyObject *loop = Py_NewRef(self->loop);
        PyObject *now = PyObject_CallMethodNoArgs(loop, st->k_time);
        Py_DECREF(loop);
        if (now == NULL) {
            goto out;
        }
        Py_XSETREF(self->idle_since, now);
        set_field(&self->served_any, Py_True);
    }
    int keep = cycle->keep_conn == NULL ? 0 : truth(cycle->keep_conn);
    if (keep < 0) {
        goto out;
    }
    if (!keep) {
        int stdin_done = cycle->stdin_done == NULL ? 0 : truth(cycle->stdin_done);
        if (stdin_done < 0) {
            goto out;
        }
        r = stdin_done ? PyObject_CallMethodNoArgs(op, st->k_close)
                       : PyObject_CallMethodOneArg(op, st->k_linger, rid);
    } else {
        int idle_close = self->close_when_idle == NULL ? 0 : truth(self->close_when_idle);
        if (idle_close < 0) {
            goto out;
        }
        if (idle_close && PyDict_GET_SIZE(requests) == 0) {
            if (self->on_idle != NULL && self->on_idle != Py_None) {
                PyObject *on_idle = Py_NewRef(self->on_idle);
                r = PyObject_CallOneArg(on_idle, op);
                Py_DECREF(on_idle);
            } else {
                r = PyObject_CallMethodNoArgs(op, st->k_close);
            }
        } else {
            r = Py_NewRef(Py_None);
        }
    }
    if (r == NULL) {
        goto out;
    }
    Py_CLEAR(r);
    result = Py_NewRef(Py_None);
out:
    Py_XDECREF(rid);
    Py_XDECREF(retire_at);
    Py_XDECREF(served);
    Py_XDECREF(stats);
    Py_DECREF(requests);
    Py_DECREF(ctx);
    Py_DECREF(cycle);
    return result;
}

static PyMethodDef conn_methods[] = {
    {"data_received", (PyCFunction)(void (*)(void))conn_data_received,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "Open and start the one whole request a read holds, alone here; else the general path."},
    {"write_last", (PyCFunction)(void (*)(void))conn_write_last,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "Write a request's last records: now, unless another write may join them this turn."},
    {"request_ended", (PyCFunction)(void (*)(void))conn_request_ended,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "The request wrote its END_REQUEST: free its id, count it, close if not kept."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot conn_slots[] = {
    {Py_tp_doc, "A connection's per-request steps and the fields they use."},
    {Py_tp_members, conn_members},
    {Py_tp_methods, conn_methods},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_dealloc, conn_dealloc},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "fcgi_asgi._speedups.ConnectionCore",
    .basicsize = sizeof(ConnectionCore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = conn_slots,
};

/* ---- Sent: an awaitable already finished ------------------------------------ */

/* What RequestCore.send() returns for a message it has done: awaiting it
 * gives None at once. It is its own iterator, and has send(), throw() and
 * close(), so it is a collections.abc.Coroutine too: asyncio.create_task(),
 * ensure_future() and anyio's start_soon() take it. It holds no state, so one
 * object serves every request. */
static PyObject *
sent_self(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *
sent_next(PyObject *self)
{
    return NULL; /* no error set: StopIteration(None) */
}

static PyObject *
sent_send(PyObject *self, PyObject *value)
{
    PyErr_SetNone(PyExc_StopIteration);
    return NULL;
}

/* throw(exc) or throw(type[, value[, tb]]): raised, as a finished coroutine does. */
static PyObject *
sent_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(exc) or throw(type[, value[, tb]])");
        return NULL;
    }
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
        return NULL;
    }
    if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val == Py_None ? NULL : val);
        return NULL;
    }
    PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving from "
                                  "BaseException, not %s", Py_TYPE(typ)->tp_name);
    return NULL;
}

static PyObject *
sent_close(PyObject *self, PyObject *unused)
{
    Py_RETURN_NONE;
}

static PyMethodDef sent_methods[] = {
    {"send", sent_send, METH_O, "Raise StopIteration: the awaitable is finished."},
    {"throw", (PyCFunction)(void (*)(void))sent_throw, METH_FASTCALL, "Raise the exception."},
    {"close", sent_close, METH_NOARGS, "Nothing to close."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sent_slots[] = {
    {Py_tp_doc, "An awaitable already finished: RequestCore.send()'s result for a message done."},
    {Py_am_await, sent_self},
    {Py_tp_iter, sent_self},
    {Py_tp_iternext, sent_next},
    {Py_tp_methods, sent_methods},
    {0, NULL},
};

static PyType_Spec sent_spec = {
    .name = "fcgi_asgi._speedups.Sent",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sent_slots,
};

/* set_status_lines(lines): protocol/head.py's {status: b"Status: ...\r\n"}. */
static PyObject *
set_status_lines(PyObject *module, PyObject *lines)
{
    if (!PyDict_CheckExact(lines)) {
        PyErr_SetString(PyExc_TypeError, "set_status_lines(lines: dict[int, bytes])");
        return NULL;
    }
    /* A copy: the dict is then ours, its keys exact ints and its values bytes. */
    PyObject *copy = PyDict_New();
    if (copy == NULL) {
        return NULL;
    }
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(lines, &pos, &k, &v)) {
        if (!PyLong_CheckExact(k) || !PyBytes_CheckExact(v)) {
            Py_DECREF(copy);
            PyErr_SetString(PyExc_TypeError, "set_status_lines(lines: dict[int, bytes])");
            return NULL;
        }
        if (PyDict_SetItem(copy, k, v) < 0) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    Py_XSETREF(get_state(module)->status_lines, copy);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode_head", (PyCFunction)(void (*)(void))encode_head, METH_FASTCALL,
     "The CGI head for a status line and plain (bytes, bytes) headers, or None."},
    {"parse_records", (PyCFunction)(void (*)(void))parse_records, METH_FASTCALL,
     "Whole records of a buffer and the bytes they took."},
    {"whole_response", (PyCFunction)(void (*)(void))whole_response, METH_FASTCALL,
     "A small response's STDOUT record, the empty STDOUT and END_REQUEST as one bytes."},
    {"request_packets", request_packets, METH_O,
     "[(request id, flags, params, body), ...] of whole RESPONDER requests, else None."},
    {"request_headers", request_headers, METH_O,
     "The ASGI headers list for a dict of CGI params."},
    {"scope_from_params", (PyCFunction)(void (*)(void))scope_from_params, METH_FASTCALL,
     "The ASGI scope straight from PARAMS data in the common case, else None."},
    {"access_line", (PyCFunction)(void (*)(void))access_line, METH_FASTCALL,
     "The default access-log line of a scope and status, or None (render it in Python)."},
    {"access_logger", (PyCFunction)(void (*)(void))access_logger, METH_FASTCALL,
     "access_logger(pending, grew, fallback, max_pending) -> log: the default access line queued in C."},
    {"set_status_lines", set_status_lines, METH_O,
     "Give RequestCore.send_fast protocol/head.py's status lines."},
    {"decode_params", decode_params, METH_O,
     "Decode a complete PARAMS stream into a dict; ValueError on malformed data."},
    {"decode_params_latin1", decode_params_latin1, METH_O,
     "decode_params with names and values as latin-1 str (a WSGI environ's)."},
    {NULL, NULL, 0, NULL},
};

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    speedups_state *st = get_state(module);
    PyObject **refs = (PyObject **)st;
    for (size_t i = 0; st != NULL && i < N_STATE_REFS; i++) {
        Py_VISIT(refs[i]);
    }
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    speedups_state *st = get_state(module);
    PyObject **refs = (PyObject **)st;
    for (size_t i = 0; st != NULL && i < N_STATE_REFS; i++) {
        Py_CLEAR(refs[i]);
    }
    return 0;
}

static void
speedups_free(void *module)
{
    speedups_clear((PyObject *)module);
}

static int
speedups_exec(PyObject *module)
{
    speedups_state *st = get_state(module);
    static const struct {
        size_t offset;
        const char *text;
    } strs[] = {
#define S(field, text) {offsetof(speedups_state, field), text}
        S(k_type, "type"),
        S(k_asgi, "asgi"),
        S(k_http_version, "http_version"),
        S(k_method, "method"),
        S(k_scheme, "scheme"),
        S(k_path, "path"),
        S(k_raw_path, "raw_path"),
        S(k_query_string, "query_string"),
        S(k_root_path, "root_path"),
        S(k_headers, "headers"),
        S(k_client, "client"),
        S(k_server, "server"),
        S(k_state, "state"),
        S(k_extensions, "extensions"),
        S(k_trailers, "trailers"),
        S(k_status, "status"),
        S(k_body, "body"),
        S(k_more_body, "more_body"),
        S(k_ctx, "ctx"),
        S(k_pending_heads, "pending_heads"),
        S(k_turn_end_due, "turn_end_due"),
        S(k_at_turn_end, "at_turn_end"),
        S(k_write_last, "write_last"),
        S(k_request_ended, "request_ended"),
        S(k_wake, "wake"),
        S(k_loop, "loop"),
        S(k_time, "time"),
        S(k_send_fast, "send_fast"),
        S(k_asgi_send, "asgi_send"),
        S(k_request_class, "request_class"),
        S(k_params, "params"),
        S(k_feed_body, "feed_body"),
        S(k_stdin_done, "stdin_done"),
        S(k_start, "start"),
        S(k_protocol_failed, "_protocol_failed"),
        S(k_check_write_backlog, "_check_write_backlog"),
        S(k_records_received, "_records_received"),
        S(k_packets_received, "_packets_received"),
        S(k_write, "write"),
        S(k_stats, "stats"),
        S(k_requests_served, "requests_served"),
        S(k_retire_at, "retire_at"),
        S(k_on_retire, "on_retire"),
        S(k_forget_params, "_forget_params"),
        S(k_close, "_close"),
        S(k_linger, "_linger"),
        S(s_http, "http"),
        S(s_https, "https"),
        S(s_empty, ""),
        S(s_slash, "/"),
        S(v_10, "1.0"),
        S(v_11, "1.1"),
        S(v_2, "2"),
        S(v_3, "3"),
#undef S
    }, bytes_[] = {
#define B(field, text) {offsetof(speedups_state, field), text}
        B(s_content_type, "CONTENT_TYPE"),
        B(s_content_length, "CONTENT_LENGTH"),
        B(h_content_type, "content-type"),
        B(h_content_length, "content-length"),
        B(b_empty, ""),
        B(b_slash, "/"),
#undef B
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        PyObject **slot = (PyObject **)((char *)st + strs[i].offset);
        if ((*slot = PyUnicode_InternFromString(strs[i].text)) == NULL) {
            return -1;
        }
    }
    for (size_t i = 0; i < sizeof(bytes_) / sizeof(bytes_[0]); i++) {
        PyObject **slot = (PyObject **)((char *)st + bytes_[i].offset);
        if ((*slot = PyBytes_FromString(bytes_[i].text)) == NULL) {
            return -1;
        }
    }
    for (int i = 0; i < N_METHODS; i++) {
        if ((st->method_strs[i] = PyUnicode_InternFromString(method_names[i])) == NULL) {
            return -1;
        }
    }
    st->name_cache = PyDict_New();
    st->zero = PyLong_FromLong(0);
    st->one = PyLong_FromLong(1);
    st->empty_tuple = PyTuple_New(0);
    st->zero_float = PyFloat_FromDouble(0.0);
    if (st->name_cache == NULL || st->zero == NULL || st->one == NULL || st->empty_tuple == NULL ||
        st->zero_float == NULL) {
        return -1;
    }
    st->core_type = PyType_FromModuleAndSpec(module, &core_spec, NULL);
    if (st->core_type == NULL || PyModule_AddObjectRef(module, "RequestCore", st->core_type) < 0 ||
        PyModule_AddIntConstant(module, "WHOLE_BODY_LIMIT", WHOLE_BODY_LIMIT) < 0) {
        return -1;
    }
    PyObject *conn_type = PyType_FromModuleAndSpec(module, &conn_spec, NULL);
    if (conn_type == NULL || PyModule_AddObjectRef(module, "ConnectionCore", conn_type) < 0) {
        Py_XDECREF(conn_type);
        return -1;
    }
    Py_DECREF(conn_type);
    st->sent_type = PyType_FromModuleAndSpec(module, &sent_spec, NULL);
    if (st->sent_type == NULL ||
        (st->sent = PyType_GenericAlloc((PyTypeObject *)st->sent_type, 0)) == NULL ||
        PyModule_AddObjectRef(module, "SENT", st->sent) < 0) {
        return -1;
    }
    PyObject *keys[] = {st->k_type,       st->k_asgi,         st->k_http_version, st->k_method,
                        st->k_scheme,     st->k_path,         st->k_raw_path,     st->k_query_string,
                        st->k_root_path,  st->k_headers,      st->k_client,       st->k_server};
    for (int t = 0; t < 4; t++) {
        PyObject *d = st->scope_templates[t] = PyDict_New();
        if (d == NULL) {
            return -1;
        }
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            if (PyDict_SetItem(d, keys[i], Py_None) < 0) {
                return -1;
            }
        }
        if (((t & 2) && PyDict_SetItem(d, st->k_state, Py_None) < 0) ||
            ((t & 1) && PyDict_SetItem(d, st->k_extensions, Py_None) < 0)) {
            return -1;
        }
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, speedups_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fcgi_asgi._speedups",
    .m_doc = "C versions of the gateway's hottest codec steps.",
    .m_size = sizeof(speedups_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
