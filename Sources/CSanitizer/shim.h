// ThreadSanitizer's annotation entry points, declared weak: in a build without -sanitize=thread nothing defines them,
// they resolve to NULL and the helpers below do nothing. Only the Locking module imports this.
#ifndef SECRETSFS_CSANITIZER_SHIM_H
#define SECRETSFS_CSANITIZER_SHIM_H

void __tsan_acquire(void *addr) __attribute__((weak));
void __tsan_release(void *addr) __attribute__((weak));
// In every sanitizer runtime (sanitizer_common), in none of the plain builds.
void __sanitizer_print_stack_trace(void) __attribute__((weak));

// Tells ThreadSanitizer that what a thread did before sfs_tsan_release(addr) happens before what another thread does
// after a later sfs_tsan_acquire(addr).
static inline void sfs_tsan_acquire(void *addr) {
    if (__tsan_acquire) __tsan_acquire(addr);
}

static inline void sfs_tsan_release(void *addr) {
    if (__tsan_release) __tsan_release(addr);
}

// Whether a sanitizer runtime is linked in (its interceptors make mlock and mlockall succeed without locking).
static inline int sfs_sanitizer_linked(void) {
    return __sanitizer_print_stack_trace != 0;
}

#endif
