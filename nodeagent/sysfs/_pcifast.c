/* The PCI scan's system calls, made without the interpreter between them.
 *
 * The scan is bound by system calls (14 per function). From Python each one also costs an interpreter call,
 * argument parsing and a GIL round trip, which is about a third of the scan. This module makes the same calls as
 * nodeagent/sysfs/pci.py's `_read_open`, for every function of the bus at once, with the GIL released, and hands
 * back the raw contents. It decides nothing: decoding stays in Python. Anything unusual (a directory or config that
 * cannot be read, a short config, an error other than "no such file", a name that is not UTF-8) comes back as None
 * and the caller reads that function again through the Python path, which decides what to log and skip; so both
 * paths behave the same by construction.
 *
 * read_functions(bus_fd: int, addresses: list[str]) -> list[tuple | None]
 *   one entry per address: (config, iommu_group, numa_node, reset_method, sriov_numvfs, boot_vga, driver) with
 *   bytes for file contents, str for link names, and None where the entry does not exist. Bridges (header type
 *   1 or 2) carry config and iommu_group only, like the Python path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define ADDRESS_MAX 16 /* dddddddd:bb:dd.f */
#define CONFIG_SIZE 64
#define LINK_NAME_MAX 256

/* One file's contents: len -1 when the file does not exist. */
typedef struct {
    Py_ssize_t len;
    char data[256];
} small_file;

typedef struct {
    char address[ADDRESS_MAX + 1];
    int usable; /* 0: read this function again through the Python path */
    int bridge;
    Py_ssize_t config_len;
    unsigned char config[CONFIG_SIZE];
    Py_ssize_t group_len, driver_len; /* -1: no such link */
    char group[LINK_NAME_MAX], driver[LINK_NAME_MAX];
    small_file numa, reset, numvfs, vga;
} function_facts;

/* Read at most `size` bytes of `name` in directory `dfd` with one read(2). 0 on success or when the file does not
 * exist (len -1); -1 on any other error. */
static int read_small(int dfd, const char *name, size_t size, small_file *out) {
    out->len = -1;
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    if (size > sizeof out->data)
        size = sizeof out->data;
    ssize_t n = read(fd, out->data, size);
    close(fd);
    if (n < 0)
        return -1;
    out->len = n;
    return 0;
}

/* The last component of symlink `name`'s target (e.g. "vfio-pci", "45"). 0 on success or when there is no such
 * entry (len -1); -1 on any other error or a target too long to be a sysfs link. */
static int link_name(int dfd, const char *name, char *out, Py_ssize_t *len) {
    char target[4096];
    *len = -1;
    ssize_t n = readlinkat(dfd, name, target, sizeof target);
    if (n < 0)
        return errno == ENOENT ? 0 : -1;
    if ((size_t)n >= sizeof target)
        return -1;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    size_t blen = strlen(base);
    if (blen >= LINK_NAME_MAX)
        return -1;
    memcpy(out, base, blen);
    *len = (Py_ssize_t)blen;
    return 0;
}

static void read_one(int bus_fd, function_facts *f) {
    f->usable = 0;
    int dfd = openat(bus_fd, f->address, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    int fd = openat(dfd, "config", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        goto done;
    ssize_t n = read(fd, f->config, CONFIG_SIZE);
    close(fd);
    /* Short (unprivileged or truncated) or all ones (in D3cold, gone): the Python path falls back to attributes. */
    if (n < 0x30 || (f->config[0] == 0xff && f->config[1] == 0xff))
        goto done;
    f->config_len = n;
    if (link_name(dfd, "iommu_group", f->group, &f->group_len) < 0)
        goto done;
    int kind = f->config[0x0E] & 0x7F;
    f->bridge = kind == 1 || kind == 2;
    f->numa.len = f->reset.len = f->numvfs.len = f->vga.len = f->driver_len = -1;
    if (!f->bridge) {
        int base_class = f->config[0x0B], sub_class = f->config[0x0A];
        /* The kernel gives boot_vga to VGA-compatible functions only (class 0300, or 0001 from before PCI 2.0). */
        int vga = (base_class == 0x03 && sub_class == 0x00) || (base_class == 0x00 && sub_class == 0x01);
        if (read_small(dfd, "numa_node", 32, &f->numa) < 0 || read_small(dfd, "reset_method", 256, &f->reset) < 0 ||
            read_small(dfd, "sriov_numvfs", 32, &f->numvfs) < 0 || (vga && read_small(dfd, "boot_vga", 8, &f->vga) < 0) ||
            link_name(dfd, "driver", f->driver, &f->driver_len) < 0)
            goto done;
    }
    f->usable = 1;
done:
    close(dfd);
}

static PyObject *bytes_or_none(const small_file *s) {
    if (s->len < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(s->data, s->len);
}

static PyObject *name_or_none(const char *s, Py_ssize_t len) {
    if (len < 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, len, "strict");
}

/* The Python object for one function's facts; NULL with no error set when the Python path should read it. */
static PyObject *facts_tuple(const function_facts *f) {
    if (!f->usable)
        return NULL;
    PyObject *items[7] = {NULL};
    items[0] = PyBytes_FromStringAndSize((const char *)f->config, f->config_len);
    items[1] = name_or_none(f->group, f->group_len);
    if (f->bridge) {
        for (int i = 2; i < 7; i++)
            items[i] = Py_NewRef(Py_None);
    } else {
        items[2] = bytes_or_none(&f->numa);
        items[3] = bytes_or_none(&f->reset);
        items[4] = bytes_or_none(&f->numvfs);
        items[5] = bytes_or_none(&f->vga);
        items[6] = name_or_none(f->driver, f->driver_len);
    }
    PyObject *t = NULL;
    for (int i = 0; i < 7; i++)
        if (items[i] == NULL)
            goto fail;
    t = PyTuple_New(7);
    if (t == NULL)
        goto fail;
    for (int i = 0; i < 7; i++)
        PyTuple_SET_ITEM(t, i, items[i]);
    return t;
fail:
    for (int i = 0; i < 7; i++)
        Py_XDECREF(items[i]);
    /* A link name that is not UTF-8: let the Python path report it. Memory errors propagate. */
    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return NULL;
}

/* A name the scan may open relative to the bus directory: a PCI address's characters only, never a path. */
static int plain_address(const char *s, Py_ssize_t len) {
    if (len < 7 || len > ADDRESS_MAX)
        return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == ':' || c == '.'))
            return 0;
    }
    return 1;
}

/* Functions read per GIL release: bounds the scratch memory (about 1.7 KiB each) on a host with thousands. */
#define CHUNK 256

static PyObject *read_functions(PyObject *self, PyObject *args) {
    int bus_fd;
    PyObject *addresses;
    (void)self;
    if (!PyArg_ParseTuple(args, "iO!:read_functions", &bus_fd, &PyList_Type, &addresses))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(addresses);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    function_facts *facts = PyMem_Malloc(CHUNK * sizeof *facts);
    if (facts == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t start = 0; start < n; start += CHUNK) {
        Py_ssize_t count = n - start < CHUNK ? n - start : CHUNK;
        memset(facts, 0, (size_t)count * sizeof *facts);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *item = PyList_GET_ITEM(addresses, start + i);
            if (!PyUnicode_Check(item)) {
                PyErr_SetString(PyExc_TypeError, "read_functions: addresses must be str");
                goto fail;
            }
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(item, &len);
            if (s == NULL)
                goto fail;
            if (plain_address(s, len))
                memcpy(facts[i].address, s, (size_t)len);
            /* else: left empty, never opened; the Python path validates and reports it */
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < count; i++)
            if (facts[i].address[0] != '\0')
                read_one(bus_fd, &facts[i]);
        Py_END_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *t = facts_tuple(&facts[i]);
            if (t == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                t = Py_NewRef(Py_None);
            }
            PyList_SET_ITEM(out, start + i, t);
        }
    }
    PyMem_Free(facts);
    return out;
fail:
    PyMem_Free(facts);
    Py_DECREF(out); /* unset items are NULL, which list deallocation skips */
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_functions", read_functions, METH_VARARGS,
     "read_functions(bus_fd, addresses) -> list: each function's raw sysfs facts, None where the Python path must "
     "read it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "nodeagent.sysfs._pcifast",
    "The PCI scan's system calls without the interpreter between them (see nodeagent/sysfs/pci.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pcifast(void) { return PyModule_Create(&module); }
