#ifndef SECRETSFS_CCURL_SHIM_H
#define SECRETSFS_CCURL_SHIM_H

#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic: Swift cannot call them, so each argument type gets a wrapper.
static inline CURLcode secretsfs_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode secretsfs_curl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode secretsfs_curl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode secretsfs_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode secretsfs_curl_setopt_write(CURL *handle, size_t (*callback)(char *, size_t, size_t, void *),
                                                  void *userdata) {
    CURLcode rc = curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, callback);
    if (rc != CURLE_OK) {
        return rc;
    }
    return curl_easy_setopt(handle, CURLOPT_WRITEDATA, userdata);
}
static inline CURLcode secretsfs_curl_response_code(CURL *handle, long *code) {
    return curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, code);
}

// Where a 3xx response points (libcurl computes it when it does not follow redirects itself); NULL if nowhere.
static inline const char *secretsfs_curl_redirect_url(CURL *handle) {
    char *url = NULL;
    if (curl_easy_getinfo(handle, CURLINFO_REDIRECT_URL, &url) != CURLE_OK) {
        return NULL;
    }
    return url;
}

// The transfer result of a finished easy handle in a multi handle (CURLMsg's union is awkward from Swift).
static inline int secretsfs_curl_multi_next_done(CURLM *multi, CURL **easy, CURLcode *result) {
    int queued = 0;
    CURLMsg *message;
    while ((message = curl_multi_info_read(multi, &queued)) != NULL) {
        if (message->msg == CURLMSG_DONE) {
            *easy = message->easy_handle;
            *result = message->data.result;
            return 1;
        }
    }
    return 0;
}

#endif
