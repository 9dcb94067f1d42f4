/* Optional C version of records.decode_params, the costliest step of a request.
 *
 * Decoding nginx's 25 name-value pairs takes about 5.5 us in Python and about
 * 1 us here. records.py falls back to the Python version when this module is
 * not built (no compiler, or FCGI_ASGI_NO_EXTENSIONS=1 at install time); the
 * tests check both give the same results and the same errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef methods[] = {
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
    return PyModule_Create(&module);
}
