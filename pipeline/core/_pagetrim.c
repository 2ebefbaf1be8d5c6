/* Native page trimmer for pipeline.core.memory.MappedPageTrimmer (Linux only).
 *
 * A Python thread cannot run while a C call holds the GIL, and OpenVINO's save_model holds it
 * while it reads every weight page of the model: the whole checkpoint ends up resident. This
 * module runs the same loop as the Python trimmer in a plain pthread that never touches the
 * interpreter: every `interval` seconds it reads /proc/self/maps, hands back the resident pages of
 * the mappings of the tracked files (MADV_DONTNEED on read-only mappings: the data stays in the
 * page cache; MADV_PAGEOUT on writable ones: a reclaim request that can never drop written data)
 * and returns freed heap (malloc_trim). malloc_trim walks the whole heap and locks each arena while
 * it does: in a process that has loaded torch, transformers and NNCF it takes 50-180 ms, so it runs
 * at most once a second and takes at most 1/HEAP_DUTY of the time; the pages come back every pass.
 *
 * API: start(files, interval) -> handle, where files is a sequence of (st_dev, st_ino);
 *      stop(handle) -> (passes made, malloc_trim calls among them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <time.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define CAPSULE_NAME "pipeline._pagetrim.trimmer"
#define HEAP_MIN_GAP_S 1.0 /* seconds between two malloc_trim calls, at least */
#define HEAP_DUTY 20.0     /* and at least HEAP_DUTY times what the last one took */

typedef struct {
    unsigned long long *devs;
    unsigned long long *inos;
    Py_ssize_t count;
    long interval_ns;
    int stop;
    int joined;
    unsigned long long passes;
    unsigned long long heap_trims;
    double heap_due; /* CLOCK_MONOTONIC seconds before which malloc_trim is not called again */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} trimmer_t;

static int is_tracked(const trimmer_t *t, unsigned long long dev, unsigned long long ino) {
    for (Py_ssize_t i = 0; i < t->count; i++)
        if (t->devs[i] == dev && t->inos[i] == ino)
            return 1;
    return 0;
}

static double monotonic_s(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static void trim_heap(trimmer_t *t) {
    double start = monotonic_s();
    if (start < t->heap_due)
        return;
    malloc_trim(0);
    t->heap_trims++;
    double end = monotonic_s();
    double gap = (end - start) * HEAP_DUTY;
    t->heap_due = end + (gap > HEAP_MIN_GAP_S ? gap : HEAP_MIN_GAP_S);
}

static void trim_once(trimmer_t *t) {
    FILE *maps = fopen("/proc/self/maps", "re");
    if (maps != NULL) {
        char line[512];
        while (fgets(line, sizeof line, maps) != NULL) {
            unsigned long start, end, offset;
            unsigned int major, minor;
            unsigned long long ino;
            char perms[8];
            int parsed = sscanf(line, "%lx-%lx %7s %lx %x:%x %llu", &start, &end, perms, &offset,
                                &major, &minor, &ino) == 7;
            size_t len = strlen(line);
            while (len > 0 && line[len - 1] != '\n' && fgets(line, sizeof line, maps) != NULL)
                len = strlen(line); /* skip the rest of a long line (the path) */
            if (parsed && is_tracked(t, (unsigned long long)makedev(major, minor), ino))
                madvise((void *)start, end - start, strchr(perms, 'w') ? MADV_PAGEOUT : MADV_DONTNEED);
        }
        fclose(maps);
    }
    trim_heap(t);
    t->passes++;
}

static void *trim_loop(void *arg) {
    trimmer_t *t = (trimmer_t *)arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += t->interval_ns % 1000000000L;
        until.tv_sec += t->interval_ns / 1000000000L + until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        while (!t->stop && pthread_cond_timedwait(&t->wake, &t->lock, &until) != ETIMEDOUT) {
        }
        if (t->stop)
            break;
        pthread_mutex_unlock(&t->lock);
        trim_once(t);
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static void stop_and_join(trimmer_t *t) {
    if (!t->joined) {
        pthread_mutex_lock(&t->lock);
        t->stop = 1;
        pthread_cond_signal(&t->wake);
        pthread_mutex_unlock(&t->lock);
        pthread_join(t->thread, NULL);
        t->joined = 1;
    }
}

/* Frees a trimmer whose thread is not running (never started, or joined). */
static void free_trimmer(trimmer_t *t) {
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->wake);
    free(t->devs);
    free(t->inos);
    free(t);
}

static void capsule_free(PyObject *capsule) {
    trimmer_t *t = (trimmer_t *)PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (t == NULL)
        return;
    Py_BEGIN_ALLOW_THREADS
    stop_and_join(t);
    Py_END_ALLOW_THREADS
    free_trimmer(t);
}

static PyObject *pagetrim_start(PyObject *self, PyObject *args) {
    PyObject *files;
    double interval;
    if (!PyArg_ParseTuple(args, "Od", &files, &interval))
        return NULL;
    if (!(interval > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "interval must be positive");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(files, "files must be a sequence of (st_dev, st_ino)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    trimmer_t *t = (trimmer_t *)calloc(1, sizeof(trimmer_t));
    if (t == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->wake, NULL);
    t->devs = (unsigned long long *)calloc(n ? n : 1, sizeof(unsigned long long));
    t->inos = (unsigned long long *)calloc(n ? n : 1, sizeof(unsigned long long));
    if (t->devs == NULL || t->inos == NULL) {
        Py_DECREF(seq);
        free_trimmer(t);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK", &t->devs[i], &t->inos[i])) {
            Py_DECREF(seq);
            free_trimmer(t);
            return NULL;
        }
    }
    Py_DECREF(seq);
    t->count = n;
    t->interval_ns = (long)(interval * 1e9);
    int err = pthread_create(&t->thread, NULL, trim_loop, t);
    if (err != 0) {
        free_trimmer(t);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *capsule = PyCapsule_New(t, CAPSULE_NAME, capsule_free);
    if (capsule == NULL) {
        stop_and_join(t);
        free_trimmer(t);
        return NULL;
    }
    return capsule;
}

static PyObject *pagetrim_stop(PyObject *self, PyObject *capsule) {
    trimmer_t *t = (trimmer_t *)PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (t == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    stop_and_join(t);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(KK)", t->passes, t->heap_trims);
}

static PyMethodDef methods[] = {
    {"start", pagetrim_start, METH_VARARGS,
     "start(files, interval) -> handle: trim the mappings of files ((st_dev, st_ino) pairs) "
     "every interval seconds in a native thread."},
    {"stop", pagetrim_stop, METH_O, "stop(handle) -> (passes, heap_trims): stop the thread and wait for it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pagetrim",
                                    "Native page trimmer (see pipeline.core.memory.MappedPageTrimmer).", -1, methods};

PyMODINIT_FUNC PyInit__pagetrim(void) { return PyModule_Create(&module); }
