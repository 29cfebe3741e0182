/* MedsFeatureProcessor's one pass per engine step over the rows' live output lists, in C
 * (openrlhf_meds/engine/vllm_features.py, `scan_rows`): read each row's newest token and
 * advance its BraceScanner state. The same in Python and numpy costs ~20 ns a row (a call and
 * an int conversion per row, then array operations), this a few; vllm_features.py falls back
 * to that where this module did not build. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* scan(rows, classes, table, shift, state, hits) -> int: BraceScanner.step over the rows'
 * newest tokens in one pass (openrlhf_meds/meds/answer.py). For row i: t = rows[i][-1] (-1
 * without one), c = classes[t] (t outside 0..len(classes)-1: the last entry, "no token"),
 * e = table[state[i] << shift | c]; state[i] = e & 255; when e >> 8 (the candidate flags) is
 * not 0, hits[2k] = i and hits[2k + 1] = e >> 8. Returns k, the number of candidate rows.
 * classes: int16, table: uint16, state: int16 (>= len(rows) each), hits: int64 (>= 2 x len(rows)). */
static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *rows;
    Py_buffer classes, table, state, hits;
    int shift;
    if (!PyArg_ParseTuple(args, "O!y*y*iw*w*", &PyList_Type, &rows, &classes, &table, &shift, &state, &hits))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows), k = 0;
    Py_ssize_t n_classes = classes.len / 2, n_table = table.len / 2;
    const short *cls = (const short *)classes.buf;
    const unsigned short *tab = (const unsigned short *)table.buf;
    short *st = (short *)state.buf;
    long long *out = (long long *)hits.buf;
    if (state.len < n * 2 || hits.len < n * 16 || n_classes < 1) {
        PyErr_SetString(PyExc_ValueError, "scan: state or hits too short for the rows");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        long long t = -1;
        if (PyList_Check(row) && PyList_GET_SIZE(row) > 0) {
            t = PyLong_AsLongLong(PyList_GET_ITEM(row, PyList_GET_SIZE(row) - 1));
            if (t == -1 && PyErr_Occurred()) PyErr_Clear();
        }
        short c = cls[(t >= 0 && t < n_classes) ? t : n_classes - 1];
        Py_ssize_t at = ((Py_ssize_t)st[i] << shift) | c;
        unsigned short e = (at >= 0 && at < n_table) ? tab[at] : 0;
        st[i] = (short)(e & 255);
        if (e >> 8) {
            out[2 * k] = i;
            out[2 * k + 1] = e >> 8;
            k++;
        }
    }
done:
    PyBuffer_Release(&classes);
    PyBuffer_Release(&table);
    PyBuffer_Release(&state);
    PyBuffer_Release(&hits);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(k);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "BraceScanner.step over the rows' newest tokens, in one pass"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
