/* Optional C versions of the two costliest steps of a request:
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

/* encode_head(status_line, headers) -> bytes, or None when anything is
 * unusual (not a list/tuple of (bytes, bytes) pairs, a name that is not a
 * token or is "status", a value with CR, LF or NUL): cycle.encode_head then
 * takes the Python path, which raises the precise error or drops the header. */
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
        if (nl == 0 || (nl == 6 && strncasecmp((const char *)np, "status", 6) == 0)) {
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

static PyMethodDef methods[] = {
    {"encode_head", (PyCFunction)(void (*)(void))encode_head, METH_FASTCALL,
     "The CGI head for a status line and plain (bytes, bytes) headers, or None."},
    {"parse_records", (PyCFunction)(void (*)(void))parse_records, METH_FASTCALL,
     "Whole records of a buffer and the bytes they took."},
    {"request_headers", request_headers, METH_O,
     "The ASGI headers list for a dict of CGI params."},
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
    return PyModule_Create(&module);
}
