#ifndef SECRETSFS_CFUSE3_SHIM_H
#define SECRETSFS_CFUSE3_SHIM_H

// The FUSE API version must be fixed before the header is read; a modulemap cannot carry it.
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stddef.h>
#include <sys/stat.h>

// Several libfuse entry points are macros over versioned symbols; Swift cannot call macros.
static inline int secretsfs_session_loop_mt(struct fuse_session *se, unsigned int max_idle_threads) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (cfg == NULL) {
        return -ENOMEM;
    }
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    fuse_loop_cfg_set_idle_threads(cfg, max_idle_threads);
    int rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return rc;
}

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

// fuse_file_info carries bit-fields, which Swift imports awkwardly; set them here.
static inline void secretsfs_fi_set_keep_cache(struct fuse_file_info *fi, int on) { fi->keep_cache = on ? 1 : 0; }
static inline void secretsfs_fi_set_noflush(struct fuse_file_info *fi, int on) { fi->noflush = on ? 1 : 0; }

#endif
