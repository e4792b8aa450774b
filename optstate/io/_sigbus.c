/* A SIGBUS handler for memory-mapped inputs that shrink while they are read
 * (optstate/io/readguard.py says why; this file only does what Python cannot).
 *
 * Touching a mapped page past the end of a file that another program truncated raises
 * SIGBUS in the reading thread. Python's own handlers run later, between bytecodes, and
 * returning from a fault runs the faulting load again, so the handler must act in the
 * signal itself, with async-signal-safe calls only: fstat() each registered file (a
 * descriptor of our own, so a rename cannot fool it), write() the message prepared by
 * Python for the one that shrank, _exit(2). A SIGBUS that is not that (no registered file
 * shrank, and not an address error in a mapping) gets the default action back and is
 * raised again: the crash it would have been.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_WATCHED 64
#define MAX_TEXT 2048

typedef struct {
    int fd;
    long long size;
    size_t len;
    char text[MAX_TEXT];
} watched_t;

static watched_t watched[MAX_WATCHED];
static volatile sig_atomic_t n_watched = 0;
/* Temp files and folders being written (optstate/io/atomic.py): removed before _exit, so a
   fault leaves the old target and nothing else, as an error does. */
#define MAX_TEMPS 16
static char temps[MAX_TEMPS][PATH_MAX];
static volatile sig_atomic_t temp_used[MAX_TEMPS];

static char other_text[MAX_TEXT];
static size_t other_len = 0;
static int installed = 0;

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(2, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

#ifdef SYS_getdents64
struct dirent64_raw {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* rm -r of a flat folder (a DCP temp folder: files only) with raw system calls: no malloc,
   nothing that is not async-signal-safe. */
static void remove_folder(const char *path)
{
    static char buf[16384];
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct dirent64_raw *d = (struct dirent64_raw *)(buf + off);
            off += d->d_reclen;
            if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
                continue;
            if (unlinkat(fd, d->d_name, 0) != 0)
                unlinkat(fd, d->d_name, AT_REMOVEDIR);
        }
    }
    close(fd);
    rmdir(path);
}
#else
static void remove_folder(const char *path) { rmdir(path); }
#endif

static void remove_temps(void)
{
    for (int i = 0; i < MAX_TEMPS; i++) {
        if (!temp_used[i])
            continue;
        if (unlink(temps[i]) != 0 && (errno == EISDIR || errno == EPERM))
            remove_folder(temps[i]);
    }
}

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    (void)context;
    static int reporting = 0;
    int n = n_watched;
    if (n > 0 && __atomic_exchange_n(&reporting, 1, __ATOMIC_SEQ_CST)) {
        for (;;) /* another reading thread faulted too and is reporting: its _exit ends us */
            pause();
    }
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (fstat(watched[i].fd, &st) == 0 && (long long)st.st_size < watched[i].size) {
            write_all(watched[i].text, watched[i].len);
            remove_temps();
            _exit(2);
        }
    }
    if (n > 0 && info != NULL && info->si_code == BUS_ADRERR) {
        /* a mapped page that could not be read: the file was cut and grown back, or
           its device failed */
        write_all(other_text, other_len);
        remove_temps();
        _exit(2);
    }
    signal(sig, SIG_DFL);
    raise(sig); /* delivered as the handler returns: a SIGBUS sent with kill() too */
}

static int copy_text(char *dst, size_t *len, PyObject *bytes)
{
    char *src;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(bytes, &src, &n) < 0)
        return -1;
    if (n > MAX_TEXT)
        n = MAX_TEXT;
    memcpy(dst, src, (size_t)n);
    *len = (size_t)n;
    return 0;
}

static PyObject *install(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *text;
    if (!PyArg_ParseTuple(args, "S", &text))
        return NULL;
    if (copy_text(other_text, &other_len, text) < 0)
        return NULL;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, NULL) != 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        installed = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *watch(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    long long size;
    PyObject *text;
    if (!PyArg_ParseTuple(args, "iLS", &fd, &size, &text))
        return NULL;
    int i = n_watched;
    if (i >= MAX_WATCHED)
        Py_RETURN_FALSE;
    watched[i].fd = fd;
    watched[i].size = size;
    if (copy_text(watched[i].text, &watched[i].len, text) < 0)
        return NULL;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the entry is complete before it counts */
    n_watched = i + 1;
    Py_RETURN_TRUE;
}

static PyObject *remove_on_fault(PyObject *self, PyObject *args)
{
    (void)self;
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#", &path, &n))
        return NULL;
    if (n >= PATH_MAX)
        return PyLong_FromLong(-1);
    for (int i = 0; i < MAX_TEMPS; i++) {
        if (temp_used[i])
            continue;
        memcpy(temps[i], path, (size_t)n);
        temps[i][n] = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        temp_used[i] = 1;
        return PyLong_FromLong(i);
    }
    return PyLong_FromLong(-1);
}

static PyObject *forget(PyObject *self, PyObject *args)
{
    (void)self;
    int i;
    if (!PyArg_ParseTuple(args, "i", &i))
        return NULL;
    if (i >= 0 && i < MAX_TEMPS)
        temp_used[i] = 0;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", install, METH_VARARGS,
     "install(other_message: bytes): handle SIGBUS (once); other_message is written when "
     "no watched file shrank but a mapped page could not be read."},
    {"watch", watch, METH_VARARGS,
     "watch(fd, size, message: bytes) -> bool: on SIGBUS, if fd's file is now smaller "
     "than size, write message to stderr and _exit(2). False when the table is full."},
    {"remove_on_fault", remove_on_fault, METH_VARARGS,
     "remove_on_fault(path: bytes) -> int: the handler also removes path (a file, or a "
     "folder of files) before it exits; a slot for forget(), -1 if none is free."},
    {"forget", forget, METH_VARARGS, "forget(slot): stop removing that path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_sigbus",
    .m_doc = "SIGBUS from a truncated memory-mapped input: one message and exit status 2.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__sigbus(void)
{
    return PyModule_Create(&module);
}
