#ifndef SECRETSFS_COPENSSL_SHIM_H
#define SECRETSFS_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

// Macros Swift cannot call.
static inline long secretsfs_ssl_set_hostname(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline int secretsfs_ssl_want_read(void) { return SSL_ERROR_WANT_READ; }
static inline int secretsfs_ssl_want_write(void) { return SSL_ERROR_WANT_WRITE; }
static inline int secretsfs_ssl_zero_return(void) { return SSL_ERROR_ZERO_RETURN; }

#endif
