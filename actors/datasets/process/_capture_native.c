/* C speed-up of capture.py: one wake-up of the process-events reader, without the interpreter.
 *
 * Optional: setup.py builds it when a C compiler is present; capture.py has the same function in pure Python
 * (capture_wake_python), which the tests check this one against, and uses that when this is missing. It only
 * accelerates what capture.py defines: drain the connector's sockets, decode their messages into fixed records,
 * and read the /proc files of the processes that exec'd and did not exit in the same wake-up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RECEIVE_BYTES 8192
#define FIRST_READ_BYTES 16384 /* procfs.FIRST_READ_BYTES */
#define MORE_BYTES 65536       /* procfs.MORE_BYTES */
#define HEADER_BYTES 52        /* nlmsghdr (16) + cn_msg (20) + what, cpu, timestamp (16) */
#define NLMSG_DONE_TYPE 3
#define CN_IDX_PROC_ 1
#define CN_VAL_PROC_ 1
#define EVENT_NONE 0x00000000u
#define EVENT_FORK 0x00000001u
#define EVENT_EXEC 0x00000002u
#define EVENT_EXIT 0x80000000u

/* One record (capture.RECORD, "=IIIIQQqq6q"): what, cpu, seq, ack, timestamp_ns, received_ns, data count,
 * read index (the EXEC's entry in the reads list, else -1), data. */
#pragma pack(push, 1)
typedef struct {
    uint32_t what, cpu, seq, ack;
    uint64_t timestamp_ns, received_ns;
    int64_t count, read_index;
    int64_t data[6];
} Record;
#pragma pack(pop)

typedef struct {
    Record *items;
    size_t size, capacity;
} Records;

static int records_add(Records *records, const Record *record) {
    if (records->size == records->capacity) {
        size_t capacity = records->capacity ? records->capacity * 2 : 64;
        Record *grown = PyMem_Realloc(records->items, capacity * sizeof(Record));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        records->items = grown;
        records->capacity = capacity;
    }
    records->items[records->size++] = *record;
    return 0;
}

static uint32_t u32(const unsigned char *at) {
    uint32_t value;
    memcpy(&value, at, 4);
    return value;
}

static int32_t i32(const unsigned char *at) {
    int32_t value;
    memcpy(&value, at, 4);
    return value;
}

static uint64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* capture.decode_datagram and _event_data, into records. */
static int decode(const unsigned char *datagram, size_t size, uint64_t received_ns, Records *records) {
    size_t offset = 0;
    while (offset + HEADER_BYTES <= size) {
        const unsigned char *at = datagram + offset;
        uint32_t length = u32(at);
        uint16_t kind;
        memcpy(&kind, at + 4, 2);
        if (length < 16) {
            break;
        }
        if (kind == NLMSG_DONE_TYPE && u32(at + 16) == CN_IDX_PROC_ && u32(at + 20) == CN_VAL_PROC_) {
            size_t end = offset + length < size ? offset + length : size;
            size_t start = offset + HEADER_BYTES;
            Record record = {0};
            record.seq = u32(at + 24);
            record.ack = u32(at + 28);
            record.what = u32(at + 36);
            record.cpu = u32(at + 40);
            memcpy(&record.timestamp_ns, at + 44, 8);
            record.received_ns = received_ns;
            record.read_index = -1;
            const unsigned char *data = datagram + start;
            if (record.what == EVENT_FORK && start + 16 <= end) {
                record.count = 4;
                for (int i = 0; i < 4; i++) {
                    record.data[i] = i32(data + 4 * i);
                }
            } else if (record.what == EVENT_EXEC && start + 8 <= end) {
                record.count = 2;
                record.data[0] = i32(data);
                record.data[1] = i32(data + 4);
            } else if (record.what == EVENT_EXIT && start + 16 <= end) {
                record.count = 6;
                record.data[0] = i32(data);
                record.data[1] = i32(data + 4);
                record.data[2] = u32(data + 8);
                record.data[3] = u32(data + 12);
                if (start + 24 <= end) {
                    record.data[4] = i32(data + 16);
                    record.data[5] = i32(data + 20);
                }
            } else if (record.what == EVENT_NONE && start + 4 <= end) {
                record.count = 1;
                record.data[0] = u32(data);
            }
            if (records_add(records, &record) < 0) {
                return -1;
            }
        }
        offset += (length + 3) & ~3u;
    }
    return 0;
}

/* Receive up to `most` datagrams without waiting; ENOBUFS counts in *enobufs. Returns 1 when it stopped at
 * `most` (there may be more), 0 when the socket was empty, -1 with an exception set. */
static int drain(int descriptor, Py_ssize_t most, Records *records, long *enobufs) {
    unsigned char buffer[RECEIVE_BYTES];
    for (Py_ssize_t turn = 0; turn < most; turn++) {
        ssize_t size = recv(descriptor, buffer, sizeof buffer, MSG_DONTWAIT);
        if (size < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            if (errno == ENOBUFS) {
                (*enobufs)++;
                continue;
            }
            if (errno == EINTR) {
                turn--;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (decode(buffer, (size_t)size, monotonic_ns(), records) < 0) {
            return -1;
        }
    }
    return 1;
}

static int is_vanished(int error) { return error == ENOENT || error == ENOTDIR || error == ESRCH; }

/* What a read gave: the content (`make`), None when the file is not there, or the errno. */
static PyObject *outcome(int error) {
    if (is_vanished(error)) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(error);
}

/* procfs.read_bytes(path, whole, short_is_end=True): bytes, None (vanished) or the errno. */
static PyObject *read_file(const char *path, int whole) {
    int descriptor = open(path, O_RDONLY | O_CLOEXEC);
    if (descriptor < 0) {
        return outcome(errno);
    }
    char first[FIRST_READ_BYTES];
    ssize_t got = read(descriptor, first, sizeof first);
    if (got < 0) {
        int error = errno;
        close(descriptor);
        return outcome(error);
    }
    if (!whole || got < FIRST_READ_BYTES) {
        close(descriptor);
        return PyBytes_FromStringAndSize(first, got);
    }
    size_t size = (size_t)got, capacity = FIRST_READ_BYTES + MORE_BYTES;
    char *data = PyMem_Malloc(capacity);
    if (data == NULL) {
        close(descriptor);
        return PyErr_NoMemory();
    }
    memcpy(data, first, size);
    for (;;) {
        if (capacity - size < MORE_BYTES) {
            char *grown = PyMem_Realloc(data, capacity * 2);
            if (grown == NULL) {
                PyMem_Free(data);
                close(descriptor);
                return PyErr_NoMemory();
            }
            data = grown;
            capacity *= 2;
        }
        ssize_t more = read(descriptor, data + size, MORE_BYTES);
        if (more < 0) {
            int error = errno;
            PyMem_Free(data);
            close(descriptor);
            return outcome(error);
        }
        if (more == 0) {
            break;
        }
        size += (size_t)more;
    }
    close(descriptor);
    PyObject *content = PyBytes_FromStringAndSize(data, (Py_ssize_t)size);
    PyMem_Free(data);
    return content;
}

/* procfs.read_link: the target as os.readlink gives it (str), None (vanished) or the errno. */
static PyObject *read_link(const char *path) {
    char target[PATH_MAX + 1];
    ssize_t size = readlink(path, target, PATH_MAX);
    if (size < 0) {
        return outcome(errno);
    }
    return PyUnicode_DecodeFSDefaultAndSize(target, size);
}

/* exe_hash.file_id(os.stat(path)), or None when it cannot be had. */
static PyObject *file_identity(const char *path) {
    struct stat status;
    if (stat(path, &status) < 0) {
        Py_RETURN_NONE;
    }
    long long mtime_ns = (long long)status.st_mtim.tv_sec * 1000000000LL + status.st_mtim.tv_nsec;
    return Py_BuildValue("(KKLL)", (unsigned long long)status.st_dev, (unsigned long long)status.st_ino,
                         (long long)status.st_size, mtime_ns);
}

static int path_of(char *path, size_t room, const char *proc, long pid, const char *name) {
    int size = snprintf(path, room, "%s%ld/%s", proc, pid, name);
    if (size < 0 || (size_t)size >= room) {
        PyErr_SetString(PyExc_ValueError, "proc path too long");
        return -1;
    }
    return 0;
}

/* capture.ExecReads for each pid, in capture.read_execs's order: every exe link and cmdline first, then the
 * rest of each (stat; and when stat was read: status, cwd, the executable's identity, cgroup). */
static PyObject *read_execs(const char *proc, const long *pids, Py_ssize_t count, PyObject *reads_type) {
    char path[PATH_MAX];
    PyObject *rows = PyList_New(count);
    if (rows == NULL) {
        return NULL;
    }
    PyObject **fields = PyMem_Calloc((size_t)(count ? count : 1) * 8, sizeof(PyObject *));
    if (fields == NULL) {
        Py_DECREF(rows);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject **row = fields + 8 * i;
        if (path_of(path, sizeof path, proc, pids[i], "exe") < 0 || (row[1] = read_link(path)) == NULL) {
            goto fail;
        }
        if (path_of(path, sizeof path, proc, pids[i], "cmdline") < 0 || (row[2] = read_file(path, 1)) == NULL) {
            goto fail;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject **row = fields + 8 * i;
        if ((row[0] = PyLong_FromLong(pids[i])) == NULL) {
            goto fail;
        }
        if (path_of(path, sizeof path, proc, pids[i], "stat") < 0 || (row[3] = read_file(path, 0)) == NULL) {
            goto fail;
        }
        if (!PyBytes_Check(row[3])) { /* gone or unreadable: nothing more is read of it */
            for (int field = 4; field < 8; field++) {
                row[field] = Py_NewRef(Py_None);
            }
            continue;
        }
        if (path_of(path, sizeof path, proc, pids[i], "status") < 0 || (row[4] = read_file(path, 0)) == NULL) {
            goto fail;
        }
        if (path_of(path, sizeof path, proc, pids[i], "cwd") < 0 || (row[5] = read_link(path)) == NULL) {
            goto fail;
        }
        if (PyUnicode_Check(row[1]) && PyUnicode_GET_LENGTH(row[1]) > 0) {
            if (path_of(path, sizeof path, proc, pids[i], "exe") < 0 || (row[6] = file_identity(path)) == NULL) {
                goto fail;
            }
        } else {
            row[6] = Py_NewRef(Py_None);
        }
        if (path_of(path, sizeof path, proc, pids[i], "cgroup") < 0 || (row[7] = read_file(path, 1)) == NULL) {
            goto fail;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject **row = fields + 8 * i;
        PyObject *tuple = PyTuple_New(8);
        if (tuple == NULL) {
            goto fail;
        }
        for (int field = 0; field < 8; field++) {
            PyTuple_SET_ITEM(tuple, field, row[field]);
            row[field] = NULL;
        }
        PyObject *reads = PyObject_Call(reads_type, tuple, NULL);
        Py_DECREF(tuple);
        if (reads == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(rows, i, reads);
    }
    PyMem_Free(fields);
    return rows;
fail:
    for (Py_ssize_t i = 0; i < 8 * count; i++) {
        Py_XDECREF(fields[i]);
    }
    PyMem_Free(fields);
    Py_DECREF(rows);
    return NULL;
}

PyDoc_STRVAR(capture_wake_doc,
             "capture_wake(main, execs, proc, most, reads_type) -> (records, reads, main_more, enobufs, items)\n\n"
             "capture.capture_wake_python, in C (see there).");

/* One wake-up's take as (records, reads, main_more, enobufs, items); NULL with an exception set. */
static PyObject *capture_once(int main_socket, int exec_socket, const char *proc, Py_ssize_t most,
                              PyObject *reads_type) {
    Records records = {0};
    long enobufs = 0;
    long *live = NULL;
    PyObject *blob = NULL, *reads = NULL, *result = NULL;
    int main_more = drain(main_socket, most, &records, &enobufs);
    if (main_more < 0) {
        goto done;
    }
    size_t from_main = records.size;
    if (exec_socket >= 0 && drain(exec_socket, most, &records, &enobufs) < 0) {
        goto done;
    }
    size_t taken = records.size;
    /* The pids whose last EXEC comes after their last EXIT, in the order of their EXECs (a dict's). */
    live = PyMem_Malloc((records.size ? records.size : 1) * sizeof(long));
    if (live == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t count = 0;
    for (size_t i = 0; i < records.size; i++) {
        const Record *record = &records.items[i];
        if (record->count < 2 || record->data[0] != record->data[1]) {
            continue;
        }
        if (record->what == EVENT_EXEC || record->what == EVENT_EXIT) {
            Py_ssize_t at = 0;
            while (at < count && live[at] != record->data[0]) {
                at++;
            }
            if (record->what == EVENT_EXEC && at == count) {
                live[count++] = (long)record->data[0];
            } else if (record->what == EVENT_EXIT && at < count) {
                memmove(live + at, live + at + 1, (size_t)(count - at - 1) * sizeof(long));
                count--;
            }
        }
    }
    for (size_t i = 0; i < records.size; i++) {
        Record *record = &records.items[i];
        if (record->what == EVENT_EXEC && record->count == 2 && record->data[0] == record->data[1]) {
            for (Py_ssize_t at = 0; at < count; at++) {
                if (live[at] == record->data[0]) {
                    record->read_index = at;
                    break;
                }
            }
        }
    }
    if ((reads = read_execs(proc, live, count, reads_type)) == NULL) {
        goto done;
    }
    if (taken > from_main) { /* the FORKs of the EXECs just taken came before them: on the main socket now */
        if ((main_more = drain(main_socket, most, &records, &enobufs)) < 0) {
            goto done;
        }
    }
    long items = 0; /* process EXECs and EXITs */
    for (size_t i = 0; i < records.size; i++) {
        const Record *record = &records.items[i];
        items += (record->what == EVENT_EXEC || record->what == EVENT_EXIT) && record->count >= 2 &&
                 record->data[0] == record->data[1];
    }
    if ((blob = PyBytes_FromStringAndSize((const char *)records.items, (Py_ssize_t)(records.size * sizeof(Record)))) ==
        NULL) {
        goto done;
    }
    result = Py_BuildValue("(OOOll)", blob, reads, main_more ? Py_True : Py_False, enobufs, items);
done:
    Py_XDECREF(blob);
    Py_XDECREF(reads);
    PyMem_Free(live);
    PyMem_Free(records.items);
    return result;
}

PyDoc_STRVAR(read_execs_doc, "read_execs(proc, pids, reads_type) -> [reads_type]\n\n"
                             "capture.read_execs, in C (what capture_wake reads; for the tests).");

static PyObject *read_execs_entry(PyObject *self, PyObject *args) {
    const char *proc;
    PyObject *pid_list, *reads_type;
    if (!PyArg_ParseTuple(args, "yO!O", &proc, &PyList_Type, &pid_list, &reads_type)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(pid_list);
    long *pids = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(long));
    if (pids == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        pids[i] = PyLong_AsLong(PyList_GET_ITEM(pid_list, i));
        if (pids[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(pids);
            return NULL;
        }
    }
    PyObject *rows = read_execs(proc, pids, count, reads_type);
    PyMem_Free(pids);
    return rows;
}

static PyObject *capture_wake(PyObject *self, PyObject *args) {
    int main_socket, exec_socket;
    const char *proc;
    Py_ssize_t most;
    PyObject *reads_type;
    if (!PyArg_ParseTuple(args, "iiynO", &main_socket, &exec_socket, &proc, &most, &reads_type)) {
        return NULL;
    }
    return capture_once(main_socket, exec_socket, proc, most, reads_type);
}

static double monotonic_seconds(void) { return (double)monotonic_ns() / 1e9; }

PyDoc_STRVAR(gather_doc, "gather(main, execs, lifeline, mounts, proc, most, reads_type, waiting, main_more, "
                         "gathered_at, send_at, quiet_at, hold, frame_items, burst_items, frame_hold, most_wakes)"
                         "\n\ncapture.gather_python, in C (see there).");

static PyObject *gather(PyObject *self, PyObject *args) {
    int main_socket, exec_socket, lifeline, mounts, main_more;
    const char *proc;
    Py_ssize_t most, most_wakes;
    long waiting, frame_items, burst_items;
    double gathered_at, send_at, quiet_at, hold, frame_hold;
    PyObject *reads_type;
    if (!PyArg_ParseTuple(args, "iiiiynOlpddddlldn", &main_socket, &exec_socket, &lifeline, &mounts, &proc, &most,
                          &reads_type, &waiting, &main_more, &gathered_at, &send_at, &quiet_at, &hold, &frame_items,
                          &burst_items, &frame_hold, &most_wakes)) {
        return NULL;
    }
    PyObject *wakes = PyList_New(0);
    if (wakes == NULL) {
        return NULL;
    }
    int fired = 0;
    for (;;) {
        if (!main_more) {
            double now = monotonic_seconds();
            int busy = exec_socket >= 0 && (waiting > 0 || now < quiet_at);
            struct pollfd fds[4];
            nfds_t count = 0;
            fds[count++] = (struct pollfd){.fd = lifeline, .events = POLLIN};
            if (mounts >= 0) {
                fds[count++] = (struct pollfd){.fd = mounts, .events = POLLPRI};
            }
            if (exec_socket >= 0) {
                fds[count++] = (struct pollfd){.fd = exec_socket, .events = POLLIN};
            }
            if (!busy) {
                fds[count++] = (struct pollfd){.fd = main_socket, .events = POLLIN};
            }
            double until = waiting > 0 ? send_at : busy ? quiet_at : -1.0;
            int timeout = -1;
            if (until >= 0) {
                double left = (until - now) * 1000.0;
                timeout = left <= 0 ? 0 : left >= (double)INT_MAX ? INT_MAX : (int)left + ((double)(int)left < left);
            }
            int ready;
            Py_BEGIN_ALLOW_THREADS
            ready = poll(fds, count, timeout);
            Py_END_ALLOW_THREADS
            if (ready < 0) {
                if (errno == EINTR) {
                    if (PyErr_CheckSignals() < 0) {
                        Py_DECREF(wakes);
                        return NULL;
                    }
                    continue;
                }
                Py_DECREF(wakes);
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            for (nfds_t i = 0; i < count; i++) {
                if (fds[i].fd == lifeline && fds[i].revents) {
                    fired |= 1;
                } else if (fds[i].fd == mounts && (fds[i].revents & POLLPRI)) {
                    fired |= 2;
                }
            }
        }
        PyObject *wake = capture_once(main_socket, exec_socket, proc, most, reads_type);
        if (wake == NULL) {
            Py_DECREF(wakes);
            return NULL;
        }
        main_more = PyObject_IsTrue(PyTuple_GET_ITEM(wake, 2));
        long enobufs = PyLong_AsLong(PyTuple_GET_ITEM(wake, 3));
        long items = PyLong_AsLong(PyTuple_GET_ITEM(wake, 4));
        if (PyBytes_GET_SIZE(PyTuple_GET_ITEM(wake, 0)) > 0 || enobufs > 0) {
            if (PyList_Append(wakes, wake) < 0) {
                Py_DECREF(wake);
                Py_DECREF(wakes);
                return NULL;
            }
        }
        Py_DECREF(wake);
        if (items > 0 && waiting == 0) {
            gathered_at = monotonic_seconds();
            send_at = gathered_at + hold;
            quiet_at = send_at + frame_hold;
        }
        waiting += items;
        double now = monotonic_seconds();
        int due = waiting > 0 && (waiting >= frame_items || now >= send_at ||
                                  (waiting >= burst_items && now >= gathered_at + frame_hold));
        if (due || fired || enobufs > 0 || PyList_GET_SIZE(wakes) >= most_wakes) {
            break;
        }
    }
    return Py_BuildValue("(NiNddd)", wakes, fired, PyBool_FromLong(main_more), gathered_at, send_at, quiet_at);
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS, gather_doc},
    {"capture_wake", capture_wake, METH_VARARGS, capture_wake_doc},
    {"read_execs", read_execs_entry, METH_VARARGS, read_execs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "_capture_native", "C speed-up of capture.py (optional; see _capture_native.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__capture_native(void) { return PyModule_Create(&module_definition); }
