#ifndef SECRETSFS_CFUSE3_SHIM_H
#define SECRETSFS_CFUSE3_SHIM_H

// The FUSE API version must be fixed before the header is read; a modulemap cannot carry it.
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stddef.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

// Which slot of the in-flight page this FUSE thread serves, and where the page's culprit word is: a fault on a FUSE
// thread (a Swift trap, an abort, a bad access) writes that thread's slot + 1 there before the process dies, so the
// supervisor knows which request it died on. Static: only FuseBridge/SessionLoop.swift may call these (one copy).
static __thread int secretsfs_fuse_slot = -1;
static volatile uint32_t *secretsfs_culprit_word = NULL;

static inline void secretsfs_set_fuse_slot(int slot) { secretsfs_fuse_slot = slot; }

static void secretsfs_fault_handler(int signal_number) {
    if (secretsfs_culprit_word != NULL && secretsfs_fuse_slot >= 0) {
        *secretsfs_culprit_word = (uint32_t)secretsfs_fuse_slot + 1;
    }
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

static inline void secretsfs_mark_faults(void *culprit_word) {
    secretsfs_culprit_word = (volatile uint32_t *)culprit_word;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = secretsfs_fault_handler;
    action.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    const int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE};
    for (unsigned i = 0; i < sizeof signals / sizeof signals[0]; i++) sigaction(signals[i], &action, NULL);
}

// The calling thread's id, as the kernel puts it in a FUSE request's header (pid: the task, not its process).
#include <sys/syscall.h>
#include <unistd.h>
static inline int32_t secretsfs_thread_id(void) { return (int32_t)syscall(SYS_gettid); }
// utimensat's special times are macros of an expression.
static inline long secretsfs_utime_omit(void) { return UTIME_OMIT; }
static inline long secretsfs_utime_now(void) { return UTIME_NOW; }

// Several libfuse entry points are macros over versioned symbols; Swift cannot call macros.
static inline struct fuse_session *secretsfs_session_new(struct fuse_args *args,
                                                         const struct fuse_lowlevel_ops *ops,
                                                         void *userdata) {
    return fuse_session_new(args, ops, sizeof(*ops), userdata);
}

// Feeds one raw request (the FUSE_INIT the supervisor read and kept) to a session, as if read from its device.
static inline void secretsfs_process_raw(struct fuse_session *se, const void *mem, size_t size) {
    struct fuse_buf buf;
    buf.size = size;
    buf.flags = (enum fuse_buf_flags)0;
    buf.mem = (void *)mem;
    buf.fd = -1;
    buf.pos = 0;
    fuse_session_process_buf(se, &buf);
}

// Capability bits are macros too.
static inline unsigned int secretsfs_cap_auto_inval_data(void) { return FUSE_CAP_AUTO_INVAL_DATA; }
static inline unsigned int secretsfs_cap_no_open_support(void) { return FUSE_CAP_NO_OPEN_SUPPORT; }
static inline unsigned int secretsfs_cap_atomic_o_trunc(void) { return FUSE_CAP_ATOMIC_O_TRUNC; }

// fuse_file_info carries bit-fields, which Swift imports awkwardly; set them here.
static inline void secretsfs_fi_set_keep_cache(struct fuse_file_info *fi, int on) { fi->keep_cache = on ? 1 : 0; }
static inline void secretsfs_fi_set_noflush(struct fuse_file_info *fi, int on) { fi->noflush = on ? 1 : 0; }

#endif
