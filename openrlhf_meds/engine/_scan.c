/* The newest token of every batch row, read in C: MedsFeatureProcessor's one pass per engine
 * step over the rows' live output lists (openrlhf_meds/engine/vllm_features.py). The same
 * loop in Python costs ~30-50 ns a row (a call and an int conversion per row), this one a few;
 * `newest_tokens` in vllm_features.py is the pure-Python fallback with the same result. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* newest_tokens(rows: list[list[int]], out: writable buffer of >= len(rows) int64) -> None:
 * out[i] = rows[i][-1], or -1 for an empty list, a row that is not a list, or a token that
 * is not an int64. */
static PyObject *newest_tokens(PyObject *self, PyObject *args) {
    PyObject *rows;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "O!w*", &PyList_Type, &rows, &out)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (out.len < n * (Py_ssize_t)sizeof(long long)) {
        PyBuffer_Release(&out);
        PyErr_Format(PyExc_ValueError, "newest_tokens: out holds %zd bytes, %zd rows need %zd", out.len, n,
                     n * (Py_ssize_t)sizeof(long long));
        return NULL;
    }
    long long *dst = (long long *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        long long token = -1;
        if (PyList_Check(row) && PyList_GET_SIZE(row) > 0) {
            token = PyLong_AsLongLong(PyList_GET_ITEM(row, PyList_GET_SIZE(row) - 1));
            if (token == -1 && PyErr_Occurred()) PyErr_Clear();
        }
        dst[i] = token;
    }
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"newest_tokens", newest_tokens, METH_VARARGS, "out[i] = rows[i][-1] (-1 for an empty row)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
