/* http1.h: the HTTP/1.1 request grammar (RFC 9112), as pure functions over bytes.
 *
 * Every rule the server applies to a request's bytes, and every limit on them,
 * lives here, in one file a reader can audit; common/httpd.c only moves bytes
 * between sockets and these functions. Nothing here allocates, does I/O or
 * knows libevent, so the unit tests, the differential test against Node's
 * llhttp (tests/http/) and the fuzz target (tests/fuzz/fuzz_http.c) run the
 * exact code the servers run.
 *
 * Three steps, each strict (anything the RFC does not allow is refused, never
 * "repaired", because a front proxy may read a repaired request differently:
 * that is request smuggling):
 *   1. http1_scan_head(): find the end of a request head in bytes that arrive
 *      in pieces; refuses a bare CR or bare LF as soon as it is seen, and a
 *      head over the size limit (431).
 *   2. http1_parse_head(): split a complete head in place into method, target,
 *      version and header fields, and decide the body's framing. Refuses NUL
 *      and every other control character (HTAB is allowed inside field values
 *      only), obs-fold, a missing or repeated Host in HTTP/1.1, a repeated or
 *      non-decimal Content-Length, Transfer-Encoding in HTTP/1.0, more than one
 *      Transfer-Encoding header, a coding list whose last coding is not
 *      `chunked`, and Transfer-Encoding together with Content-Length.
 *   3. http1_chunked_parse(): read a chunked body incrementally: chunk sizes
 *      of 1-16 hex digits and nothing else, extensions that follow the grammar
 *      within a bounded line, CRLF after every line and every chunk, bounded
 *      trailers (validated, then discarded).
 *
 * Errors are reported as the HTTP status to answer with (400, 413, 431, 501,
 * 505) plus a short static reason for the error message.
 *
 * Ownership and threads: the caller owns every buffer and state struct; the
 * functions keep no global state, so any thread may call them.
 */
#ifndef CASCADE_HTTP1_H
#define CASCADE_HTTP1_H

#include <stddef.h>
#include <stdint.h>

/* ---- the limits (the configurable ones arrive in struct http1_limits) ---- */
#define HTTP1_MAX_FIELDS 100           /* header fields per request: more -> 431 */
#define HTTP1_MAX_METHOD 32            /* bytes of a method token */
#define HTTP1_MAX_CL_DIGITS 18         /* a longer Content-Length cannot fit any body limit */
#define HTTP1_MAX_CHUNK_DIGITS 16      /* 64 bits of chunk size */
#define HTTP1_MAX_CHUNK_LINE 4096      /* chunk size + extensions, without the CRLF */
#define HTTP1_MAX_TRAILER_BYTES 8192   /* the whole trailer section */

struct http1_limits {
    size_t max_header_bytes;    /* the head, request line to the blank line inclusive */
    uint64_t max_body_bytes;    /* the decoded body: Content-Length, or the sum of chunks */
};

/* Return values of the incremental functions (errors are HTTP statuses >= 400). */
enum { HTTP1_MORE = 0, HTTP1_DONE = 1, HTTP1_DATA = 2 };

/* ---- 1. finding the end of the head ---- */
struct http1_scan {
    size_t len;                 /* bytes scanned so far */
    size_t line_len;            /* bytes of the current line, CR included */
    unsigned char prev;         /* the last byte scanned */
};

/* Scan n more bytes of the head (continuing from *s, zeroed for a new head).
 * HTTP1_DONE with *head_len = the bytes up to and including the blank line's
 * CRLF (maybe fewer than given: pipelined bytes follow); HTTP1_MORE when all n
 * bytes belong to the head so far; else 400 (bare CR or LF) or 431. */
int http1_scan_head(struct http1_scan *s, const char *p, size_t n, size_t max_header_bytes,
                    size_t *head_len, const char **why);

/* ---- 2. parsing the head ---- */
struct http1_field {
    const char *name, *value;   /* NUL-terminated, inside the caller's buffer; value without OWS */
};

enum http1_framing {
    HTTP1_BODY_NONE,            /* no body (no Content-Length, no Transfer-Encoding) */
    HTTP1_BODY_LENGTH,          /* content_length bytes follow */
    HTTP1_BODY_CHUNKED,         /* chunked coding follows: see http1_chunked_parse() */
};

struct http1_head {
    const char *method;
    const char *path;           /* the origin-form target up to '?' */
    const char *query;          /* after '?', or NULL */
    int minor;                  /* HTTP/1.<minor>: 0 or 1 */
    struct http1_field fields[HTTP1_MAX_FIELDS];
    int n_fields;
    enum http1_framing framing;
    uint64_t content_length;    /* for HTTP1_BODY_LENGTH */
    int keep_alive;             /* the connection may carry another request after this one */
    int expect_continue;        /* Expect: 100-continue (HTTP/1.1 only) */
};

/* Parse a complete head: buf[0..len) is what http1_scan_head() measured,
 * ending in CRLF CRLF. Writes NULs into buf; h points into it afterwards.
 * 0, or the status to refuse with (*why: a static reason). */
int http1_parse_head(char *buf, size_t len, const struct http1_limits *lim, struct http1_head *h,
                     const char **why);

/* The first field of that name (ASCII case-insensitive), or NULL. */
const char *http1_field(const struct http1_head *h, const char *name);

/* ---- 3. chunked bodies ---- */
enum http1_chunk_state {
    HTTP1_CK_SIZE,              /* hex digits of a chunk size */
    HTTP1_CK_EXT_NAME_START,    /* after ';': the first byte of an extension name */
    HTTP1_CK_EXT_NAME,          /* the rest of the name (a token) */
    HTTP1_CK_EXT_VALUE_START,   /* after '=': a token or a quoted string */
    HTTP1_CK_EXT_TOKEN,         /* inside an unquoted extension value */
    HTTP1_CK_EXT_QUOTED,        /* inside a quoted extension value */
    HTTP1_CK_EXT_ESCAPE,        /* after '\' inside a quoted value */
    HTTP1_CK_EXT_AFTER_QUOTE,   /* after the closing quote: ';' or CR */
    HTTP1_CK_SIZE_LF,           /* the LF ending a chunk-size line */
    HTTP1_CK_DATA,              /* chunk data */
    HTTP1_CK_DATA_CR,           /* the CRLF after chunk data */
    HTTP1_CK_DATA_LF,
    HTTP1_CK_TRAILER_START,     /* the start of a trailer line, or of the final CRLF */
    HTTP1_CK_TRAILER_NAME,
    HTTP1_CK_TRAILER_VALUE,
    HTTP1_CK_TRAILER_LF,
    HTTP1_CK_END_LF,            /* the LF of the final CRLF */
    HTTP1_CK_DONE,
};

struct http1_chunked {
    enum http1_chunk_state state;
    uint64_t remaining;         /* data bytes left in the current chunk */
    uint64_t total;             /* data bytes so far, against max_body_bytes */
    uint64_t max_body_bytes;
    size_t line_len;            /* bytes of the current chunk-size line */
    size_t trailer_bytes;
    unsigned digits;            /* hex digits of the current size */
    int last;                   /* the current size line is the last chunk's (size 0) */
};

void http1_chunked_init(struct http1_chunked *ck, uint64_t max_body_bytes);

/* Read n bytes of chunked framing and data. *used gets the bytes consumed.
 * HTTP1_DATA: the last *data_len consumed bytes (at p + *used - *data_len)
 * are body data for the caller; call again with the rest. HTTP1_MORE: all n
 * consumed, more needed. HTTP1_DONE: the body ended (bytes after p + *used
 * belong to the next request). Else the status to refuse with: 400 or 413. */
int http1_chunked_parse(struct http1_chunked *ck, const char *p, size_t n, size_t *used, size_t *data_len,
                        const char **why);

#endif
