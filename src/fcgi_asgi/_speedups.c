/* Optional C versions of the costliest steps of a request:
 * records.decode_params (nginx's 25 name-value pairs: 5.7 us in Python, 1.4 us
 * here) and scope.request_headers_py (the ASGI header list).
 * records.py and scope.py fall back to the Python versions when this module is
 * not built (no compiler, or FCGI_ASGI_NO_EXTENSIONS=1 at install time); the
 * tests check both give the same results and the same errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <strings.h>

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

static PyObject *
decode_params(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t end = view.len, pos = 0;
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
                         "the last name-value pair overruns PARAMS data by %zd bytes",
                         pos + nlen + vlen - end);
            goto fail;
        }
        PyObject *name = PyBytes_FromStringAndSize((const char *)buf + pos, nlen);
        PyObject *value = name ? PyBytes_FromStringAndSize((const char *)buf + pos + nlen, vlen)
                               : NULL;
        int failed = value == NULL || PyDict_SetItem(params, name, value) < 0;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (failed) {
            goto fail;
        }
        pos += nlen + vlen;
    }
    PyBuffer_Release(&view);
    return params;

fail:
    Py_XDECREF(params);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- parse_records: whole records out of a buffer ------------------------- */

/* parse_records(src, record_type) -> (records, consumed)
 * Every whole record in src (bytes or bytearray, read in place) as an instance
 * of record_type (a tuple subclass of three: type, request id, content), and
 * how many bytes they took; a partial record at the end is left. ValueError
 * for a header whose version is not 1. */
static PyObject *
parse_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "parse_records(src, record_type: tuple subclass)");
        return NULL;
    }
    PyTypeObject *rtype_cls = (PyTypeObject *)args[1];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t end = view.len, pos = 0;
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
        Py_ssize_t next = pos + 8 + clen + h[6];
        if (next > end) {
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
        pos = next;
    }
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("(Nn)", records, pos);
    return result;

fail:
    Py_XDECREF(records);
    PyBuffer_Release(&view);
    return NULL;
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
        if ((size_t)nl == strlen(names[i]) && strncasecmp((const char *)np, names[i], nl) == 0) {
            return 1;
        }
    }
    return 0;
}

/* encode_head(status_line, headers) -> bytes, or None when anything is
 * unusual (not a list/tuple of (bytes, bytes) pairs, a name that is not a
 * token, is "status" or hop-by-hop, a value with CR, LF or NUL):
 * protocol/head.py then takes the Python path, which raises the precise
 * error or drops the header. */
static PyObject *
encode_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_head(status_line: bytes, headers)");
        return NULL;
    }
    PyObject *line = args[0], *headers = args[1];
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
        if (nl == 0 || (nl == 6 && strncasecmp((const char *)np, "status", 6) == 0) ||
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

/* ---- request_headers: the ASGI header list of a request's params ---------- */

static PyObject *name_cache; /* param name -> header name, bounded */
static PyObject *s_content_type, *s_content_length, *h_content_type, *h_content_length;

static int
all_digits(PyObject *value)
{
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

/* HTTP_X_Y -> x-y, from the cache when seen before. New reference. */
static PyObject *
header_name(PyObject *param)
{
    PyObject *name = PyDict_GetItemWithError(name_cache, param);
    if (name != NULL) {
        Py_INCREF(name);
        return name;
    }
    if (PyErr_Occurred()) {
        return NULL;
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
    if (PyDict_GET_SIZE(name_cache) < 4096 && PyDict_SetItem(name_cache, param, name) < 0) {
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

/* The same rules as scope.request_headers_py: HTTP_* params become headers;
 * CONTENT_TYPE when not empty and CONTENT_LENGTH when a number; their
 * HTTP_CONTENT_* twins only when the CGI variable is absent. */
static PyObject *
request_headers(PyObject *module, PyObject *params)
{
    if (!PyDict_CheckExact(params)) {
        PyErr_SetString(PyExc_TypeError, "request_headers() takes a dict");
        return NULL;
    }
    PyObject *headers = PyList_New(0);
    if (headers == NULL) {
        return NULL;
    }
    Py_ssize_t it = 0;
    PyObject *key, *value;
    while (PyDict_Next(params, &it, &key, &value)) {
        if (!PyBytes_CheckExact(key) || !PyBytes_CheckExact(value)) {
            continue;
        }
        Py_ssize_t klen = PyBytes_GET_SIZE(key);
        const char *k = PyBytes_AS_STRING(key);
        int rc = 0;
        if (klen > 5 && memcmp(k, "HTTP_", 5) == 0) {
            if (klen == 17 && memcmp(k + 5, "CONTENT_TYPE", 12) == 0) {
                int has = PyDict_Contains(params, s_content_type);
                if (has < 0) {
                    goto fail;
                }
                if (has) {
                    continue;
                }
            } else if (klen == 19 && memcmp(k + 5, "CONTENT_LENGTH", 14) == 0) {
                int has = PyDict_Contains(params, s_content_length);
                if (has < 0) {
                    goto fail;
                }
                if (has || !all_digits(value)) {
                    continue;
                }
            }
            PyObject *name = header_name(key);
            if (name == NULL) {
                goto fail;
            }
            rc = append_pair(headers, name, value);
            Py_DECREF(name);
        } else if (klen == 12 && memcmp(k, "CONTENT_TYPE", 12) == 0) {
            if (PyBytes_GET_SIZE(value) == 0) {
                continue;
            }
            rc = append_pair(headers, h_content_type, value);
        } else if (klen == 14 && memcmp(k, "CONTENT_LENGTH", 14) == 0) {
            if (!all_digits(value)) {
                continue;
            }
            rc = append_pair(headers, h_content_length, value);
        }
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
    return s.len == n && strncasecmp(s.p, lit, n) == 0;
}

static PyObject *k_type, *k_asgi, *k_http_version, *k_method, *k_scheme, *k_path, *k_raw_path,
    *k_query_string, *k_root_path, *k_headers, *k_client, *k_server, *k_state, *k_extensions;
static PyObject *s_http, *s_https, *s_empty, *s_slash, *b_empty, *b_slash, *zero;
static PyObject *v_10, *v_11, *v_2, *v_3;
static const char *method_names[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
#define N_METHODS 7
static PyObject *method_strs[N_METHODS];

/* New reference to the http_version string for SERVER_PROTOCOL (scope._HTTP_VERSIONS). */
static PyObject *
http_version(span s)
{
    PyObject *v = v_11;
    if (s.len < 0) {
        v = v_11;
    } else if (span_is(s, "HTTP/1.0") || span_is(s, "HTTP/0.9")) {
        v = v_10;
    } else if (span_is(s, "HTTP/2.0") || span_is(s, "HTTP/2")) {
        v = v_2;
    } else if (span_is(s, "HTTP/3") || span_is(s, "HTTP/3.0")) {
        v = v_3;
    }
    Py_INCREF(v);
    return v;
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

/* (latin-1 host, port) for the scope's client/server; port_absent is the
 * port used when the param is not a number (0 for client, None for server). */
static PyObject *
address(span host, span port, PyObject *port_absent)
{
    long long pv = port_value(port);
    PyObject *h = PyUnicode_DecodeLatin1(host.p, host.len, NULL);
    if (h == NULL) {
        return NULL;
    }
    PyObject *p;
    if (pv >= 0) {
        p = PyLong_FromLongLong(pv);
    } else {
        p = port_absent;
        Py_INCREF(p);
    }
    if (p == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(h);
        Py_DECREF(p);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, h);
    PyTuple_SET_ITEM(t, 1, p);
    return t;
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
    PyObject *asgi = args[1], *state = args[2], *extensions = args[3];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const char *buf = (const char *)view.buf;
    Py_ssize_t end = view.len, pos = 0;
    span vars[V_COUNT];
    span hnames[MAX_HEADERS], hvalues[MAX_HEADERS];
    int nheaders = 0;
    PyObject *scope = NULL, *headers = NULL;
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
    int lighttpd = software.len >= 8 && strncasecmp(software.p, "lighttpd", 8) == 0;
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
        method = method_strs[0];
    } else {
        for (int i = 0; i < N_METHODS; i++) {
            if (span_is(m, method_names[i])) {
                method = method_strs[i];
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
    headers = PyList_New(0);
    if (headers == NULL) {
        goto fail;
    }
    for (int i = 0; i < nheaders; i++) {
        span n = hnames[i], v = hvalues[i];
        PyObject *hname;
        if (n.len == 12 && n.p[0] == 'C') { /* CONTENT_TYPE */
            if (v.len == 0) {
                continue;
            }
            hname = h_content_type;
            Py_INCREF(hname);
        } else if (n.len == 14 && n.p[0] == 'C') { /* CONTENT_LENGTH */
            if (!span_digits(v)) {
                continue;
            }
            hname = h_content_length;
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
            hname = PyBytes_FromStringAndSize(NULL, n.len - 5);
            if (hname == NULL) {
                goto fail;
            }
            char *dst = PyBytes_AS_STRING(hname);
            for (Py_ssize_t j = 5; j < n.len; j++) {
                char c = n.p[j];
                *dst++ = c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
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
        int rc = PyList_Append(headers, pair);
        Py_DECREF(pair);
        if (rc < 0) {
            goto fail;
        }
    }

    /* The scope, with the keys in scope.build_scope's order. */
    PyObject *scheme = s_http;
    span https = vars[V_HTTPS], rs = vars[V_REQUEST_SCHEME];
    if (span_is_nocase(https, "on") || span_is(https, "1") || span_is_nocase(https, "yes")) {
        scheme = s_https;
    } else if (span_is_nocase(rs, "https")) {
        scheme = s_https;
    }
    scope = PyDict_New();
    if (scope == NULL || PyDict_SetItem(scope, k_type, s_http) < 0 ||
        PyDict_SetItem(scope, k_asgi, asgi) < 0 ||
        set_steal(scope, k_http_version, http_version(vars[V_SERVER_PROTOCOL])) < 0 ||
        PyDict_SetItem(scope, k_method, method) < 0 ||
        PyDict_SetItem(scope, k_scheme, scheme) < 0) {
        goto fail;
    }
    if (raw_path.len == 0) {
        if (PyDict_SetItem(scope, k_path, s_slash) < 0 ||
            PyDict_SetItem(scope, k_raw_path, b_slash) < 0) {
            goto fail;
        }
    } else if (set_steal(scope, k_path, decode_path(raw_path)) < 0 ||
               set_steal(scope, k_raw_path, PyBytes_FromStringAndSize(raw_path.p, raw_path.len)) <
                   0) {
        goto fail;
    }
    if ((query.len > 0 ? set_steal(scope, k_query_string,
                                   PyBytes_FromStringAndSize(query.p, query.len))
                       : PyDict_SetItem(scope, k_query_string, b_empty)) < 0 ||
        PyDict_SetItem(scope, k_root_path, s_empty) < 0 ||
        PyDict_SetItem(scope, k_headers, headers) < 0) {
        goto fail;
    }
    Py_CLEAR(headers);
    span ra = vars[V_REMOTE_ADDR];
    if ((ra.len > 0 ? set_steal(scope, k_client, address(ra, vars[V_REMOTE_PORT], zero))
                    : PyDict_SetItem(scope, k_client, Py_None)) < 0) {
        goto fail;
    }
    span host = vars[V_SERVER_ADDR].len > 0 ? vars[V_SERVER_ADDR] : vars[V_SERVER_NAME];
    if ((host.len > 0 ? set_steal(scope, k_server, address(host, vars[V_SERVER_PORT], Py_None))
                      : PyDict_SetItem(scope, k_server, Py_None)) < 0) {
        goto fail;
    }
    if (state != Py_None) {
        if (!PyDict_Check(state)) {
            PyErr_SetString(PyExc_TypeError, "scope_from_params(): state must be a dict or None");
            goto fail;
        }
        if (set_steal(scope, k_state, PyDict_Copy(state)) < 0) {
            goto fail;
        }
    }
    if (extensions != Py_None && PyDict_SetItem(scope, k_extensions, extensions) < 0) {
        goto fail;
    }
    PyBuffer_Release(&view);
    return scope;

fallback:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;

fail:
    Py_XDECREF(headers);
    Py_XDECREF(scope);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode_head", (PyCFunction)(void (*)(void))encode_head, METH_FASTCALL,
     "The CGI head for a status line and plain (bytes, bytes) headers, or None."},
    {"parse_records", (PyCFunction)(void (*)(void))parse_records, METH_FASTCALL,
     "Whole records of a buffer and the bytes they took."},
    {"request_headers", request_headers, METH_O,
     "The ASGI headers list for a dict of CGI params."},
    {"scope_from_params", (PyCFunction)(void (*)(void))scope_from_params, METH_FASTCALL,
     "The ASGI scope straight from PARAMS data in the common case, else None."},
    {"decode_params", decode_params, METH_O,
     "Decode a complete PARAMS stream into a dict; ValueError on malformed data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fcgi_asgi._speedups",
    "C versions of the gateway's hottest codec steps.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    name_cache = PyDict_New();
    s_content_type = PyBytes_FromString("CONTENT_TYPE");
    s_content_length = PyBytes_FromString("CONTENT_LENGTH");
    h_content_type = PyBytes_FromString("content-type");
    h_content_length = PyBytes_FromString("content-length");
    if (!name_cache || !s_content_type || !s_content_length || !h_content_type ||
        !h_content_length) {
        return NULL;
    }
    PyObject **interned[] = {&k_type, &k_asgi, &k_http_version, &k_method, &k_scheme, &k_path,
                             &k_raw_path, &k_query_string, &k_root_path, &k_headers, &k_client,
                             &k_server, &k_state, &k_extensions, &s_http, &s_https, &s_empty,
                             &s_slash, &v_10, &v_11, &v_2, &v_3};
    const char *texts[] = {"type", "asgi", "http_version", "method", "scheme", "path",
                           "raw_path", "query_string", "root_path", "headers", "client",
                           "server", "state", "extensions", "http", "https", "",
                           "/", "1.0", "1.1", "2", "3"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        if ((*interned[i] = PyUnicode_InternFromString(texts[i])) == NULL) {
            return NULL;
        }
    }
    for (int i = 0; i < N_METHODS; i++) {
        if ((method_strs[i] = PyUnicode_InternFromString(method_names[i])) == NULL) {
            return NULL;
        }
    }
    b_empty = PyBytes_FromStringAndSize("", 0);
    b_slash = PyBytes_FromString("/");
    zero = PyLong_FromLong(0);
    if (!b_empty || !b_slash || !zero) {
        return NULL;
    }
    return PyModule_Create(&module);
}
