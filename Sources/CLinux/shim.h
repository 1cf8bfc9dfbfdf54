#ifndef SECRETSFS_CLINUX_SHIM_H
#define SECRETSFS_CLINUX_SHIM_H

// Linux calls Glibc's Swift module does not carry: the supervisor's signalfd and its state memfd.
// No _GNU_SOURCE here: it changes glibc's struct definitions (fd_set) against Swift's own Glibc module, which then
// refuses to build. The two GNU functions used are declared below instead.
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/xattr.h>
#include <signal.h>
#include <unistd.h>

static inline int secretsfs_signalfd(const sigset_t *mask) { return signalfd(-1, mask, SFD_CLOEXEC); }

// The signal number of one `struct signalfd_siginfo` read from a signalfd.
static inline unsigned int secretsfs_signalfd_signo(const void *info) {
    return ((const struct signalfd_siginfo *)info)->ssi_signo;
}

static inline unsigned long secretsfs_signalfd_siginfo_size(void) { return sizeof(struct signalfd_siginfo); }

extern int memfd_create(const char *name, unsigned int flags);
extern int execvpe(const char *file, char *const argv[], char *const envp[]);

// The CSI plugin's read-only bind mounts: bind, then remount read-only, nosuid, nodev, noexec (a bind mount takes
// no flags of its own on the first call).
static inline int secretsfs_bind_readonly(const char *source, const char *target) {
    if (mount(source, target, NULL, MS_BIND, NULL) != 0) return -1;
    return mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

static inline int secretsfs_unmount(const char *target, int detach) { return umount2(target, detach ? MNT_DETACH : 0); }

static inline int secretsfs_memfd(const char *name) { return memfd_create(name, 0); }

// execvpe is a GNU extension Glibc's module does not carry: exec with PATH search and a given environment.
static inline int secretsfs_execvpe(const char *file, char *const argv[], char *const envp[]) {
    return execvpe(file, argv, envp);
}

// prctl is variadic: no process of the same user may ptrace this one or read its /proc/<pid>/mem, environ or maps.
static inline int secretsfs_set_undumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }
static inline int secretsfs_is_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

// Every page, now and later, locked in memory once touched (never swapped out).
static inline int secretsfs_lock_all_memory(void) {
#ifdef MCL_ONFAULT
    return mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT);
#else
    return mlockall(MCL_CURRENT | MCL_FUTURE);
#endif
}

#endif
