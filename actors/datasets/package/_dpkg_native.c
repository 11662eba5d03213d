/* C speed-ups of dpkg.py: the whole-stanza scan of installed packages and the install times from the info/ file lists.
 *
 * Optional: setup.py builds it when a C compiler is present, and dpkg.py falls back to its pure-Python path (the
 * same results, about three times the CPU) when it is missing. Both functions only accelerate what dpkg.py
 * defines; the tests check them against the pure-Python path on generated and garbled input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define PACKAGE_FIELDS 11 /* records.Package: type name version release epoch architecture installed size
                             description reference license */
#define INSTALLED_AT 6
#define MAX_SIZE_DIGITS 15 /* larger Installed-Size values are left to the Python path */

static PyObject *DPKG;      /* "dpkg" */
static PyObject *INSTALLED; /* "installed" */
static PyObject *EMPTY;     /* "" */

#define INLINE inline __attribute__((always_inline)) /* so each kind's scan is compiled with its kind constant */

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t stop;
} Text;

static INLINE Py_UCS4 char_at(const Text *text, Py_ssize_t index) {
    return PyUnicode_READ(text->kind, text->data, index);
}

/* Index of the next '\n' at or after `from` (before text->stop), or -1. */
static INLINE Py_ssize_t find_newline(const Text *text, Py_ssize_t from) {
    if (text->kind == PyUnicode_1BYTE_KIND) {
        const char *base = text->data;
        const char *hit = memchr(base + from, '\n', (size_t)(text->stop - from));
        return hit == NULL ? -1 : hit - base;
    }
    for (Py_ssize_t index = from; index < text->stop; index++) {
        if (char_at(text, index) == '\n') {
            return index;
        }
    }
    return -1;
}

static INLINE int starts_with(const Text *text, Py_ssize_t begin, Py_ssize_t end, const char *prefix, Py_ssize_t size) {
    if (end - begin < size) {
        return 0;
    }
    for (Py_ssize_t index = 0; index < size; index++) {
        if (char_at(text, begin + index) != (unsigned char)prefix[index]) {
            return 0;
        }
    }
    return 1;
}

/* dpkg.py's _VALID_LINE: a continuation or comment, or `Field:` with a name of printable ASCII but ':'. */
static INLINE int valid_line(const Text *text, Py_ssize_t begin, Py_ssize_t end) {
    Py_UCS4 first = char_at(text, begin);
    if (first == ' ' || first == '\t' || first == '#') {
        return 1;
    }
    Py_ssize_t index = begin;
    while (index < end) {
        Py_UCS4 character = char_at(text, index);
        if (character < '!' || character > '~' || character == ':') {
            break;
        }
        index++;
    }
    return index > begin && index < end && char_at(text, index) == ':';
}

enum { STATUS, SIZE, ARCHITECTURE, VERSION, DESCRIPTION, HOMEPAGE, REST };
static const char *const FIELD_PREFIXES[] = {"Status: ", "Installed-Size: ", "Architecture: ", "Version: ",
                                             "Description: ", "Homepage: "};
static const Py_ssize_t FIELD_PREFIX_SIZES[] = {8, 16, 14, 9, 13, 10};

/* Whether a value matches what _INSTALLED_STANZA wants of field `field`. */
static INLINE int value_matches(const Text *text, int field, Py_ssize_t begin, Py_ssize_t end) {
    switch (field) {
    case STATUS: { /* [^ \n]+ [^ \n]+ installed */
        static const char suffix[] = " installed";
        Py_ssize_t words_end = end - (Py_ssize_t)(sizeof suffix - 1);
        if (words_end - begin < 3 || !starts_with(text, words_end, end, suffix, sizeof suffix - 1)) {
            return 0;
        }
        int spaces = 0;
        for (Py_ssize_t index = begin; index < words_end; index++) {
            spaces += char_at(text, index) == ' ';
        }
        return spaces == 1 && char_at(text, begin) != ' ' && char_at(text, words_end - 1) != ' ';
    }
    case SIZE: /* [0-9]+ */
        if (begin == end || end - begin > MAX_SIZE_DIGITS) {
            return 0;
        }
        for (Py_ssize_t index = begin; index < end; index++) {
            Py_UCS4 character = char_at(text, index);
            if (character < '0' || character > '9') {
                return 0;
            }
        }
        return 1;
    case VERSION: /* [^ \n](?:.*[^ \n])? */
        return begin < end && char_at(text, begin) != ' ' && char_at(text, end - 1) != ' ';
    default: /* .* */
        return 1;
    }
}

/* text[begin:end] without white space at either end (as str.strip()). */
static INLINE PyObject *stripped(PyObject *string, const Text *text, Py_ssize_t begin, Py_ssize_t end) {
    while (begin < end && Py_UNICODE_ISSPACE(char_at(text, begin))) {
        begin++;
    }
    while (end > begin && Py_UNICODE_ISSPACE(char_at(text, end - 1))) {
        end--;
    }
    return PyUnicode_Substring(string, begin, end);
}

/* A new instance of tuple subclass `type` (a NamedTuple) holding `items` (references stolen, none NULL).
 *
 * The records hold only strings, numbers, None and other such records: they can be in no reference cycle, so
 * they are untracked by the cyclic garbage collector (which does that itself for plain tuples only), as `spans`
 * and slots are. A cold read makes 20,000 of them; tracked, they would be walked by every collection after. */
static PyObject *new_record(PyTypeObject *type, PyObject **items, Py_ssize_t count) {
    PyObject *record = type->tp_alloc(type, count);
    for (Py_ssize_t index = 0; index < count; index++) {
        if (record == NULL) {
            Py_XDECREF(items[index]);
        } else {
            PyTuple_SET_ITEM(record, index, items[index]);
        }
    }
    if (record != NULL && PyObject_GC_IsTracked(record)) {
        PyObject_GC_UnTrack(record);
    }
    return record;
}

/* The plain tuple (first, second) of two objects that can be in no cycle (strings, ints), untracked. */
static PyObject *untracked_pair(PyObject *first, PyObject *second) {
    PyObject *pair = PyTuple_Pack(2, first, second);
    if (pair != NULL && PyObject_GC_IsTracked(pair)) {
        PyObject_GC_UnTrack(pair);
    }
    return pair;
}

/* The stanza at `position` if _INSTALLED_STANZA takes it: 1 with *record and *end set, 0 when it is left to the
 * line-by-line path, -1 on an error. A line of the field looked for whose value does not match leaves the stanza
 * to that path too (it reads the first line of each field). */
static INLINE int installed_stanza(PyObject *string, const Text *text, Py_ssize_t position, PyTypeObject *record_type,
                            PyTypeObject *package_type, PyObject **record, Py_ssize_t *end) {
    Py_ssize_t line_end = find_newline(text, position);
    if (line_end < 0 || !starts_with(text, position, line_end, "Package: ", 9) || line_end == position + 9) {
        return 0;
    }
    Py_ssize_t name_end = line_end;
    for (Py_ssize_t index = position + 9; index < name_end; index++) {
        if (char_at(text, index) == ' ') {
            return 0;
        }
    }
    Py_ssize_t begins[REST], ends[REST];
    int field = STATUS, multi_arch_same = 0, other_homepage = 0;
    Py_ssize_t cursor = line_end + 1;
    for (;;) {
        if (cursor >= text->stop) {
            return 0;
        }
        if (char_at(text, cursor) == '\n') { /* the empty line after the stanza */
            if (field < HOMEPAGE) {
                return 0;
            }
            *end = cursor + 1;
            break;
        }
        line_end = find_newline(text, cursor);
        if (line_end < 0) {
            return 0;
        }
        if (field < REST) {
            Py_ssize_t size = FIELD_PREFIX_SIZES[field];
            if (starts_with(text, cursor, line_end, FIELD_PREFIXES[field], size)) {
                if (!value_matches(text, field, cursor + size, line_end)) {
                    return 0;
                }
                begins[field] = cursor + size;
                ends[field] = line_end;
                field++;
                cursor = line_end + 1;
                continue;
            }
        }
        if (!valid_line(text, cursor, line_end)) {
            return 0;
        }
        if (starts_with(text, cursor, line_end, "Homepage: ", 10)) {
            other_homepage = 1;
        } else if (line_end - cursor == 16 && starts_with(text, cursor, line_end, "Multi-Arch: same", 16)) {
            multi_arch_same = 1;
        }
        cursor = line_end + 1;
    }
    if (field == HOMEPAGE && other_homepage) {
        return 0; /* a Homepage before the Description: the Python path finds it */
    }
    long long size = 0;
    for (Py_ssize_t index = begins[SIZE]; index < ends[SIZE]; index++) {
        size = size * 10 + (long long)(char_at(text, index) - '0');
    }
    PyObject *items[PACKAGE_FIELDS];
    items[0] = Py_NewRef(DPKG);
    items[1] = PyUnicode_Substring(string, position + 9, name_end);
    items[2] = PyUnicode_Substring(string, begins[VERSION], ends[VERSION]);
    items[3] = Py_NewRef(EMPTY);
    items[4] = Py_NewRef(Py_None);
    items[5] = stripped(string, text, begins[ARCHITECTURE], ends[ARCHITECTURE]);
    items[6] = Py_NewRef(Py_None);
    items[7] = PyLong_FromLongLong(size * 1024);
    items[8] = stripped(string, text, begins[DESCRIPTION], ends[DESCRIPTION]);
    items[9] = field == REST ? stripped(string, text, begins[HOMEPAGE], ends[HOMEPAGE]) : Py_NewRef(EMPTY);
    items[10] = Py_NewRef(EMPTY);
    for (int index = 0; index < PACKAGE_FIELDS; index++) {
        if (items[index] == NULL) {
            for (int other = 0; other < PACKAGE_FIELDS; other++) {
                Py_XDECREF(items[other]);
            }
            return -1;
        }
    }
    PyObject *package = new_record(package_type, items, PACKAGE_FIELDS);
    if (package == NULL) {
        return -1;
    }
    PyObject *record_items[3] = {Py_NewRef(INSTALLED), package, PyBool_FromLong(multi_arch_same)};
    *record = new_record(record_type, record_items, 3);
    return *record == NULL ? -1 : 1;
}

/* scan_installed's loop, compiled once per kind of string. */
static INLINE PyObject *scan(PyObject *string, const Text *text, Py_ssize_t position, PyObject *records,
                             PyObject *spans, PyObject *record_type, PyObject *package_type) {
    while (position < text->stop) {
        if (char_at(text, position) == '\n') { /* an extra empty line between stanzas */
            position++;
            continue;
        }
        PyObject *record = NULL;
        Py_ssize_t end = 0;
        int taken = installed_stanza(string, text, position, (PyTypeObject *)record_type,
                                     (PyTypeObject *)package_type, &record, &end);
        if (taken < 0) {
            return NULL;
        }
        if (taken == 0) {
            break;
        }
        PyObject *start_index = PyLong_FromSsize_t(position), *end_index = PyLong_FromSsize_t(end);
        PyObject *span = start_index && end_index ? untracked_pair(start_index, end_index) : NULL;
        Py_XDECREF(start_index);
        Py_XDECREF(end_index);
        int failed = span == NULL || PyList_Append(records, record) < 0 || PyList_Append(spans, span) < 0;
        Py_DECREF(record);
        Py_XDECREF(span);
        if (failed) {
            return NULL;
        }
        position = end;
    }
    return PyLong_FromSsize_t(position);
}

static int is_tuple_type(PyObject *type) {
    return PyType_Check(type) && PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type);
}

PyDoc_STRVAR(scan_installed_doc,
"scan_installed(text, position, stop, records, spans, record_type, package_type) -> int\n\n"
"From `position`, appends to `records` (and their (start, end) to `spans`) the stanzas of text[:stop] that\n"
"dpkg.py's _INSTALLED_STANZA takes, skipping empty lines between them; returns where it stopped: `stop`, or\n"
"the start of a stanza left to the line-by-line path.");

static PyObject *scan_installed(PyObject *module, PyObject *args) {
    PyObject *string, *records, *spans, *record_type, *package_type;
    Py_ssize_t position, stop;
    if (!PyArg_ParseTuple(args, "UnnO!O!OO", &string, &position, &stop, &PyList_Type, &records, &PyList_Type,
                          &spans, &record_type, &package_type)) {
        return NULL;
    }
    if (!is_tuple_type(record_type) || !is_tuple_type(package_type)) {
        PyErr_SetString(PyExc_TypeError, "record_type and package_type must be tuple subclasses");
        return NULL;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(string);
    if (stop > length) {
        stop = length;
    }
    if (position < 0) {
        position = 0;
    }
    const void *data = PyUnicode_DATA(string);
    switch (PyUnicode_KIND(string)) {
    case PyUnicode_1BYTE_KIND:
        return scan(string, &(Text){PyUnicode_1BYTE_KIND, data, stop}, position, records, spans, record_type,
                    package_type);
    case PyUnicode_2BYTE_KIND:
        return scan(string, &(Text){PyUnicode_2BYTE_KIND, data, stop}, position, records, spans, record_type,
                    package_type);
    default:
        return scan(string, &(Text){PyUnicode_4BYTE_KIND, data, stop}, position, records, spans, record_type,
                    package_type);
    }
}

/* One file list to stat: the package's name and architecture in UTF-8 (owned by the strings referenced). */
typedef struct {
    PyObject *name;
    PyObject *architecture;
    const char *name_utf8;
    const char *architecture_utf8;
    Py_ssize_t name_size;
    Py_ssize_t architecture_size;
    int qualified_first;
    int found;
    int64_t mtime;
} ListStat;

/* fstatat(info, <name>.list or <name>:<arch>.list, the latter first when qualified_first); needs no GIL. */
static void stat_list(int info, ListStat *list) {
    char path[PATH_MAX];
    size_t name_size = (size_t)list->name_size, architecture_size = (size_t)list->architecture_size;
    list->found = 0;
    if (memchr(list->name_utf8, 0, name_size) != NULL || memchr(list->architecture_utf8, 0, architecture_size) ||
        name_size + architecture_size + sizeof ":.list" > sizeof path) {
        return; /* a NUL in a name, or too long to be a file name */
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t size = name_size;
        memcpy(path, list->name_utf8, name_size);
        if (attempt == 0 ? list->qualified_first : !list->qualified_first) {
            path[size++] = ':';
            memcpy(path + size, list->architecture_utf8, architecture_size);
            size += architecture_size;
        }
        memcpy(path + size, ".list", sizeof ".list");
        struct stat status;
        if (fstatat(info, path, &status, 0) == 0) {
            list->found = 1;
            list->mtime = (int64_t)status.st_mtim.tv_sec;
            return;
        }
    }
}

/* Whether `value` is the int -1 (what `known` holds for "not known", as in the Python loop). */
static int is_minus_one(PyObject *value) {
    int overflow = 0;
    return PyLong_Check(value) && PyLong_AsLongAndOverflow(value, &overflow) == -1 && !overflow;
}

static int is_record(PyObject *record) {
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 3) {
        return 0;
    }
    PyObject *package = PyTuple_GET_ITEM(record, 1);
    return PyTuple_Check(package) && PyTuple_GET_SIZE(package) == PACKAGE_FIELDS &&
           PyUnicode_Check(PyTuple_GET_ITEM(package, 1)) && PyUnicode_Check(PyTuple_GET_ITEM(package, 5));
}

PyDoc_STRVAR(installed_packages_doc,
"installed_packages(info_fd, records, known, absent) -> (packages, installed)\n\n"
"dpkg.py's _installed_packages: of `records` (state, Package, arch_qualified), the last of each (name,\n"
"architecture) slot, in the order slots first appear, unless its state is in `absent`; each package with\n"
"`installed` set to its file list's mtime (from `known`, a dict of slot to mtime, when there and not -1; else\n"
"stat'ed relative to `info_fd`, None when -1 or the list is missing), and the dict of what each slot got.");

static PyObject *installed_packages(PyObject *module, PyObject *args) {
    int info;
    PyObject *records, *known, *absent;
    if (!PyArg_ParseTuple(args, "iO!O!O!", &info, &PyList_Type, &records, &PyDict_Type, &known,
                          &PyFrozenSet_Type, &absent)) {
        return NULL;
    }
    PyObject *chosen = PyDict_New(), *slots = PyList_New(0), *kept = PyList_New(0), *times = PyList_New(0);
    PyObject *packages = NULL, *installed = NULL, *result = NULL;
    ListStat *lists = NULL;
    Py_ssize_t *pending = NULL, todo = 0;
    if (chosen == NULL || slots == NULL || kept == NULL || times == NULL) {
        goto done;
    }
    for (Py_ssize_t index = 0; index < PyList_GET_SIZE(records); index++) {
        PyObject *record = PyList_GET_ITEM(records, index);
        if (!is_record(record)) {
            PyErr_SetString(PyExc_TypeError, "records must be (state, Package, arch_qualified) tuples");
            goto done;
        }
        PyObject *package = PyTuple_GET_ITEM(record, 1);
        PyObject *slot = untracked_pair(PyTuple_GET_ITEM(package, 1), PyTuple_GET_ITEM(package, 5));
        int failed = slot == NULL || PyDict_SetItem(chosen, slot, record) < 0; /* a later one (updates/) wins */
        Py_XDECREF(slot);
        if (failed) {
            goto done;
        }
    }
    Py_ssize_t position = 0, count = 0;
    PyObject *slot, *record;
    while (PyDict_Next(chosen, &position, &slot, &record)) {
        int is_absent = PySet_Contains(absent, PyTuple_GET_ITEM(record, 0));
        if (is_absent < 0) {
            goto done;
        }
        if (!is_absent && (PyList_Append(slots, slot) < 0 || PyList_Append(kept, record) < 0)) {
            goto done;
        }
    }
    count = PyList_GET_SIZE(kept);
    lists = PyMem_Calloc((size_t)count + 1, sizeof(ListStat));
    pending = PyMem_Calloc((size_t)count + 1, sizeof(Py_ssize_t));
    if (lists == NULL || pending == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t index = 0; index < count; index++) {
        record = PyList_GET_ITEM(kept, index);
        PyObject *package = PyTuple_GET_ITEM(record, 1);
        PyObject *when = PyDict_GetItemWithError(known, PyList_GET_ITEM(slots, index));
        if (when == NULL && PyErr_Occurred()) {
            goto done;
        }
        if (when != NULL && !is_minus_one(when)) {
            if (PyList_Append(times, when) < 0) {
                goto done;
            }
            continue;
        }
        if (PyList_Append(times, Py_None) < 0) {
            goto done;
        }
        if (info < 0) {
            continue;
        }
        ListStat *list = &lists[todo];
        list->name = Py_NewRef(PyTuple_GET_ITEM(package, 1));
        list->architecture = Py_NewRef(PyTuple_GET_ITEM(package, 5));
        todo++;
        list->name_utf8 = PyUnicode_AsUTF8AndSize(list->name, &list->name_size);
        list->architecture_utf8 = PyUnicode_AsUTF8AndSize(list->architecture, &list->architecture_size);
        int qualified = PyObject_IsTrue(PyTuple_GET_ITEM(record, 2));
        if (list->name_utf8 == NULL || list->architecture_utf8 == NULL || qualified < 0) {
            goto done;
        }
        list->qualified_first = qualified;
        pending[todo - 1] = index;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t index = 0; index < todo; index++) {
        stat_list(info, &lists[index]);
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t index = 0; index < todo; index++) {
        if (lists[index].found) {
            PyObject *when = PyLong_FromLongLong(lists[index].mtime);
            if (when == NULL) {
                goto done;
            }
            PyList_SetItem(times, pending[index], when);
        }
    }
    packages = PyList_New(count);
    installed = PyDict_New();
    if (packages == NULL || installed == NULL) {
        goto done;
    }
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *package = PyTuple_GET_ITEM(PyList_GET_ITEM(kept, index), 1);
        PyObject *when = PyList_GET_ITEM(times, index);
        if (PyDict_SetItem(installed, PyList_GET_ITEM(slots, index), when) < 0) {
            goto done;
        }
        PyObject *items[PACKAGE_FIELDS];
        for (int field = 0; field < PACKAGE_FIELDS; field++) {
            items[field] = Py_NewRef(field == INSTALLED_AT ? when : PyTuple_GET_ITEM(package, field));
        }
        PyObject *copy = new_record(Py_TYPE(package), items, PACKAGE_FIELDS);
        if (copy == NULL) {
            goto done;
        }
        PyList_SET_ITEM(packages, index, copy);
    }
    result = PyTuple_Pack(2, packages, installed);
done:
    for (Py_ssize_t index = 0; index < todo; index++) {
        Py_XDECREF(lists[index].name);
        Py_XDECREF(lists[index].architecture);
    }
    PyMem_Free(lists);
    PyMem_Free(pending);
    Py_XDECREF(chosen);
    Py_XDECREF(slots);
    Py_XDECREF(kept);
    Py_XDECREF(times);
    Py_XDECREF(packages);
    Py_XDECREF(installed);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_installed", scan_installed, METH_VARARGS, scan_installed_doc},
    {"installed_packages", installed_packages, METH_VARARGS, installed_packages_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "_dpkg_native", "C speed-ups of dpkg.py (optional; see _dpkg_native.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dpkg_native(void) {
    DPKG = PyUnicode_InternFromString("dpkg");
    INSTALLED = PyUnicode_InternFromString("installed");
    EMPTY = PyUnicode_New(0, 0);
    if (DPKG == NULL || INSTALLED == NULL || EMPTY == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_definition);
}
