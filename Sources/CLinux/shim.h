#ifndef SECRETSFS_CLINUX_SHIM_H
#define SECRETSFS_CLINUX_SHIM_H

// Linux calls Glibc's Swift module does not carry: the supervisor's signalfd and its state memfd.
// No _GNU_SOURCE here: it changes glibc's struct definitions (fd_set) against Swift's own Glibc module, which then
// refuses to build. The two GNU functions used are declared below instead.
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/xattr.h>
#include <signal.h>
#include <errno.h>
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

// Takeover: a message with descriptors (SCM_RIGHTS) over a unix socket, and the peer's credentials (SO_PEERCRED;
// struct ucred needs _GNU_SOURCE, so its layout is spelled out: pid, uid, gid).
#define SECRETSFS_MAX_FDS 16
static inline long secretsfs_send_with_fds(int sock, const void *data, unsigned long length, const int *fds, int count) {
    if (count < 0 || count > SECRETSFS_MAX_FDS) return -1;
    char control[CMSG_SPACE(sizeof(int) * SECRETSFS_MAX_FDS)];
    memset(control, 0, sizeof(control));
    struct iovec vector = { (void *)data, length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    if (count > 0) {
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * count);
    }
    return sendmsg(sock, &message, MSG_NOSIGNAL);
}

// Receives one message and up to SECRETSFS_MAX_FDS descriptors (close-on-exec); *count gets their number.
static inline long secretsfs_receive_with_fds(int sock, void *buffer, unsigned long length, int *fds, int *count) {
    char control[CMSG_SPACE(sizeof(int) * SECRETSFS_MAX_FDS)];
    struct iovec vector = { buffer, length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    *count = 0;
    long received = recvmsg(sock, &message, MSG_CMSG_CLOEXEC);
    if (received < 0) return received;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int number = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int index = 0; index < number && *count < SECRETSFS_MAX_FDS; index++) {
            memcpy(&fds[*count], CMSG_DATA(header) + sizeof(int) * index, sizeof(int));
            *count += 1;
        }
    }
    if (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return -2;
    return received;
}

struct secretsfs_peer { int pid; unsigned int uid; unsigned int gid; };

static inline int secretsfs_peer_credentials(int sock, struct secretsfs_peer *peer) {
    socklen_t length = sizeof(*peer);
    return getsockopt(sock, SOL_SOCKET, 17 /* SO_PEERCRED */, peer, &length);
}

// A SOCK_SEQPACKET unix socket listening (backlog 4) or connected at `path`; -1 with errno on failure.
static inline int secretsfs_unix_seqpacket(const char *path, int listening) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(address.sun_path)) { errno = ENAMETOOLONG; return -1; }
    strcpy(address.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    int result = listening ? bind(sock, (struct sockaddr *)&address, sizeof(address))
                           : connect(sock, (struct sockaddr *)&address, sizeof(address));
    if (result == 0 && listening) result = listen(sock, 4);
    if (result != 0) { int saved = errno; close(sock); errno = saved; return -1; }
    return sock;
}

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
