/* hash.h: SHA-256 (via libcrypto), hex encoding, and constant-time compare.
 *
 * API keys and the admin token are stored only as SHA-256 hex in the config;
 * a presented key is hashed and compared with hash_ct_equal(), whose running
 * time does not depend on where the inputs differ. Thread-safe. */
#ifndef CASCADE_HASH_H
#define CASCADE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32
#define SHA256_HEX_LEN 64

void hash_sha256(const void *data, size_t len, uint8_t out[SHA256_LEN]);
/* Lowercase hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void hash_hex(const uint8_t *in, size_t n, char *out);
/* Parse exactly 2n hex digits (either case); 0 on success, -1 otherwise. */
int hash_unhex(const char *hex, uint8_t *out, size_t n);
/* 1 when a[0..n) == b[0..n), in time independent of the contents. */
int hash_ct_equal(const void *a, const void *b, size_t n);

#endif
