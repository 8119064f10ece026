/*
 * Native scan of nginx error.log text: the tailer's hot loop, in C.
 *
 * scan_nginx(block, max_line) cuts ``block`` into lines and, for every line that mentions
 * "upstream", extracts the same key as exporter.logs.classify.nginx_key(): the message between
 * "*CID " and ", client: ", and the upstream field's address part.  Lines without a key that
 * mention "upstream" or "could not be resolved" (a resolver failure has no upstream field) are
 * returned whole.  It classifies nothing; the
 * kinds are decided in Python, once per distinct key.  Keep the two in step: the tests compare
 * them on generated and real lines.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/*
 * memmem() for the short needles used here: memchr() to each occurrence of the needle's byte at
 * ``anchor`` (pick one that is rare in log lines), then memcmp().
 */
static const char *
find(const char *from, const char *to, const char *needle, size_t needle_len, size_t anchor)
{
    if (to - from < (Py_ssize_t)needle_len) {
        return NULL;
    }
    const char *last_start = to - needle_len;
    const char *at = from + anchor;
    while (at <= last_start + anchor) {
        at = memchr(at, needle[anchor], (size_t)(last_start + anchor - at) + 1);
        if (at == NULL) {
            return NULL;
        }
        if (memcmp(at - anchor, needle, needle_len) == 0) {
            return at - anchor;
        }
        at++;
    }
    return NULL;
}

static const char *
find_char(const char *from, const char *to, char c)
{
    if (from >= to) {
        return NULL;
    }
    return memchr(from, c, (size_t)(to - from));
}

/* The spans of nginx_key(); 0 when the line is not nginx's own shape. */
static int
line_key(const char *line, const char *end_of_line, const char **message, Py_ssize_t *message_len,
         const char **address, Py_ssize_t *address_len)
{
    const char *head_end = end_of_line - line > 512 ? line + 512 : end_of_line;
    const char *p = find(line, head_end, ": *", 3, 2);
    if (p == NULL) {
        return 0;
    }
    const char *space_to = end_of_line - p > 24 ? p + 24 : end_of_line;
    const char *space = find_char(p + 3, space_to, ' ');
    if (space == NULL) {
        return 0;
    }
    const char *m = space + 1;
    const char *client = find(m, end_of_line, ", client: ", 10, 0);
    if (client == NULL) {
        return 0;
    }
    const char *field = find(client, end_of_line, "upstream: \"", 11, 10);
    if (field == NULL) {
        return 0;
    }
    const char *s = field + 11;
    const char *e = find_char(s, end_of_line, '"');
    if (e == NULL) {
        return 0;
    }
    const char *stop = NULL;
    const char *unix_scheme = find(s, e - s > 16 ? s + 16 : e, "unix:", 5, 4);
    if (unix_scheme != NULL) {
        stop = find_char(unix_scheme + 5, e, ':');
    }
    else if (e - s > 10) {
        stop = find_char(s + 10, e, '/');
    }
    *message = m;
    *message_len = client - m;
    *address = s;
    *address_len = (stop != NULL ? stop : e) - s;
    return 1;
}

static int
add_timed_key(PyObject *keyed, const char *message, Py_ssize_t message_len, const char *address,
              Py_ssize_t address_len, const char *minute, Py_ssize_t n, long first, long last);

static int
add_key(PyObject *keyed, const char *message, Py_ssize_t message_len, const char *address,
        Py_ssize_t address_len, Py_ssize_t n)
{
    PyObject *key = Py_BuildValue("(y#y#)", message, message_len, address, address_len);
    if (key == NULL) {
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(keyed, key); /* borrowed */
    if (old == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *count = PyLong_FromSsize_t(old == NULL ? n : PyLong_AsSsize_t(old) + n);
    if (count == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int failed = PyDict_SetItem(keyed, key, count);
    Py_DECREF(count);
    Py_DECREF(key);
    return failed;
}

/*
 * Counting keys in a dict costs a tuple and two bytes objects per line; most lines of a block
 * repeat a handful of keys, so they are counted in a small direct-mapped table of spans
 * (verified with memcmp) and reach the dict only when a key enters or leaves its slot.
 */
#define SLOTS 256

typedef struct {
    const char *message;
    Py_ssize_t message_len;
    const char *address;
    Py_ssize_t address_len;
    const char *when; /* NULL: untimed keys; else the line's "YYYY/MM/DD HH:MM" */
    long first, last; /* timed: the first and last second within that minute */
    Py_ssize_t count;
} slot_t;

/* nginx's own timestamp at the start of a line: "YYYY/MM/DD HH:MM:SS" (19 bytes). */
#define TIME_LEN 19
#define MINUTE_LEN 16

static long
second_of(const char *line)
{
    return (line[17] - '0') * 10 + (line[18] - '0');
}

/* The timed count of a key in one minute: [count, first second, last second], merged in place. */
static int
add_timed_key(PyObject *keyed, const char *message, Py_ssize_t message_len, const char *address,
              Py_ssize_t address_len, const char *minute, Py_ssize_t n, long first, long last)
{
    PyObject *key = Py_BuildValue("(y#y#y#)", message, message_len, address, address_len, minute,
                                  (Py_ssize_t)MINUTE_LEN);
    if (key == NULL) {
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(keyed, key); /* borrowed */
    if (old == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    if (old != NULL) {
        Py_ssize_t count = PyLong_AsSsize_t(PyList_GET_ITEM(old, 0)) + n;
        long was_first = PyLong_AsLong(PyList_GET_ITEM(old, 1));
        long was_last = PyLong_AsLong(PyList_GET_ITEM(old, 2));
        Py_DECREF(key);
        if (n == 0) {
            return 0;
        }
        PyObject *values[3] = {PyLong_FromSsize_t(count), PyLong_FromLong(first < was_first ? first : was_first),
                               PyLong_FromLong(last > was_last ? last : was_last)};
        for (int i = 0; i < 3; i++) {
            if (values[i] == NULL || PyList_SetItem(old, i, values[i]) < 0) {
                for (int j = i + 1; j < 3; j++) {
                    Py_XDECREF(values[j]);
                }
                return -1;
            }
        }
        return 0;
    }
    PyObject *value = Py_BuildValue("[nll]", n, first, last);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int failed = PyDict_SetItem(keyed, key, value);
    Py_DECREF(value);
    Py_DECREF(key);
    return failed;
}

static int
starts_with_time(const char *line, const char *end)
{
    if (end - line < TIME_LEN) {
        return 0;
    }
    static const char shape[] = "dddd/dd/dd dd:dd:dd";
    for (int i = 0; i < TIME_LEN; i++) {
        int digit = line[i] >= '0' && line[i] <= '9';
        if (shape[i] == 'd' ? !digit : line[i] != shape[i]) {
            return 0;
        }
    }
    return 1;
}

static uint64_t
last8(const char *s, Py_ssize_t len)
{
    uint64_t v = 0;
    if (len >= 8) {
        memcpy(&v, s + len - 8, 8);
    }
    else if (len > 0) {
        memcpy(&v, s, (size_t)len);
    }
    return v;
}

static size_t
slot_of(const char *message, Py_ssize_t message_len, const char *address, Py_ssize_t address_len)
{
    uint64_t h = (uint64_t)message_len * 0x9E3779B97F4A7C15u ^ (uint64_t)address_len;
    h ^= last8(message, message_len) * 0xC2B2AE3D27D4EB4Fu;
    h ^= last8(address, address_len) * 0x165667B19E3779F9u;
    h ^= h >> 29;
    return (size_t)(h * 0x9E3779B97F4A7C15u >> 56) % SLOTS;
}

static int
flush_slot(PyObject *keyed, slot_t *slot)
{
    if (slot->count == 0) {
        return 0;
    }
    Py_ssize_t n = slot->count;
    slot->count = 0;
    if (slot->when != NULL) {
        return add_timed_key(keyed, slot->message, slot->message_len, slot->address, slot->address_len,
                             slot->when, n, slot->first, slot->last);
    }
    return add_key(keyed, slot->message, slot->message_len, slot->address, slot->address_len, n);
}

static int
count_key(PyObject *keyed, slot_t *slots, const char *message, Py_ssize_t message_len,
          const char *address, Py_ssize_t address_len, const char *when)
{
    slot_t *slot = &slots[slot_of(message, message_len, address, address_len)];
    if (slot->count > 0 && slot->message_len == message_len && slot->address_len == address_len &&
        memcmp(slot->message, message, (size_t)message_len) == 0 &&
        memcmp(slot->address, address, (size_t)address_len) == 0 &&
        (when == NULL ? slot->when == NULL : slot->when != NULL && memcmp(slot->when, when, MINUTE_LEN) == 0)) {
        slot->count++;
        if (when != NULL) {
            long second = second_of(when);
            slot->first = second < slot->first ? second : slot->first;
            slot->last = second > slot->last ? second : slot->last;
        }
        return 0;
    }
    if (flush_slot(keyed, slot) < 0) {
        return -1;
    }
    /* enter the key now, so that the dict keeps the order in which keys were first seen */
    long second = when != NULL ? second_of(when) : 0;
    int entered = when != NULL ? add_timed_key(keyed, message, message_len, address, address_len, when, 0, second, second)
                               : add_key(keyed, message, message_len, address, address_len, 0);
    if (entered < 0) {
        return -1;
    }
    slot->first = second;
    slot->last = second;
    slot->message = message;
    slot->message_len = message_len;
    slot->address = address;
    slot->address_len = address_len;
    slot->when = when;
    slot->count = 1;
    return 0;
}

PyDoc_STRVAR(scan_nginx_doc,
             "scan_nginx(block, max_line, timed=False, /)\n--\n\n"
             "Return (lines, keyed, other) for a block of nginx error.log lines.\n\n"
             "lines is how many lines the block holds (its last line may lack a newline);\n"
             "keyed maps nginx_key() of each line that mentions an upstream to its count;\n"
             "other lists the lines that mention an upstream but have no such key.\n"
             "Each line is cut to max_line bytes first. With timed, each key also holds the\n"
             "minute of the line's own timestamp (b'YYYY/MM/DD HH:MM' of its first 19 bytes) and\n"
             "maps to [count, first second, last second] within that minute; a line with a key\n"
             "but no timestamp at its start goes to other.");

static PyObject *
scan_nginx(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_nginx() takes 2 or 3 arguments");
        return NULL;
    }
    int timed = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (timed < 0) {
        return NULL;
    }
    Py_ssize_t max_line = PyLong_AsSsize_t(args[1]);
    if (max_line == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_line < 0) {
        PyErr_SetString(PyExc_ValueError, "max_line must not be negative");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *keyed = PyDict_New();
    PyObject *other = PyList_New(0);
    if (keyed == NULL || other == NULL) {
        goto error;
    }
    slot_t slots[SLOTS];
    memset(slots, 0, sizeof slots);
    Py_ssize_t lines = 0;
    const char *pos = view.buf;
    const char *block_end = pos + view.len;
    while (pos < block_end) {
        const char *newline = find_char(pos, block_end, '\n');
        const char *next = newline != NULL ? newline + 1 : block_end;
        const char *end_of_line = newline != NULL ? newline : block_end;
        if (end_of_line - pos > max_line) {
            end_of_line = pos + max_line;
        }
        lines++;
        const char *message, *address;
        Py_ssize_t message_len, address_len;
        int keyed_line = line_key(pos, end_of_line, &message, &message_len, &address, &address_len);
        if (keyed_line && (!timed || starts_with_time(pos, end_of_line))) {
            /* a key holds an upstream field: the line mentions "upstream" */
            if (count_key(keyed, slots, message, message_len, address, address_len, timed ? pos : NULL) < 0) {
                goto error;
            }
        }
        else if (keyed_line) {
            PyObject *line = PyBytes_FromStringAndSize(pos, end_of_line - pos);
            if (line == NULL) {
                goto error;
            }
            int failed = PyList_Append(other, line);
            Py_DECREF(line);
            if (failed < 0) {
                goto error;
            }
        }
        else if (find(pos, end_of_line, "upstream", 8, 0) != NULL
                 || find(pos, end_of_line, "could not be resolved", 21, 18) != NULL) {
            PyObject *line = PyBytes_FromStringAndSize(pos, end_of_line - pos);
            if (line == NULL) {
                goto error;
            }
            int failed = PyList_Append(other, line);
            Py_DECREF(line);
            if (failed < 0) {
                goto error;
            }
        }
        pos = next;
    }
    for (size_t i = 0; i < SLOTS; i++) {
        if (flush_slot(keyed, &slots[i]) < 0) {
            goto error;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nNN)", lines, keyed, other);

error:
    PyBuffer_Release(&view);
    Py_XDECREF(keyed);
    Py_XDECREF(other);
    return NULL;
}

static PyMethodDef scan_methods[] = {
    {"scan_nginx", (PyCFunction)(void (*)(void))scan_nginx, METH_FASTCALL, scan_nginx_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exporter.logs._scan",
    .m_doc = "Native scan of nginx error.log text (see exporter.logs.classify).",
    .m_size = 0,
    .m_methods = scan_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
