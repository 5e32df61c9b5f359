/* tokenizer_llama2c.h: llama2.c's tokenizer.bin (sentencepiece-style BPE)
 * behind struct tokenizer (tokenizer.h). It serves the stories models.
 *
 * File format: int32 max_token_length, then for each of vocab_size tokens
 * float32 score, int32 length and that many bytes of the piece. Ids 0, 1
 * and 2 are <unk>, BOS and EOS; pieces "<0x00>".."<0xFF>" stand for raw
 * bytes (byte fallback, id = byte + 3 by convention).
 *
 * Encoding is llama2.c's, exactly: non-empty text gets one leading space
 * (the sentencepiece dummy prefix); each UTF-8 character becomes its piece,
 * or its bytes' fallback ids when it has none; then the adjacent pair whose
 * concatenation is in the vocabulary with the highest score is merged,
 * leftmost first on ties, until no pair merges. A heap over a linked list
 * does this in O(n log n) instead of rescanning every pair per merge. BOS is
 * not added: the caller decides (the engine puts it first).
 *
 * Decoding follows llama2.c too: "<0xHH>" pieces decode to their byte, and a
 * piece right after BOS loses its leading space.
 *
 * Threads: immutable after loading; any thread may encode and decode.
 */
#ifndef CASCADE_TOKENIZER_LLAMA2C_H
#define CASCADE_TOKENIZER_LLAMA2C_H

#include "tokenizer/tokenizer.h"

#include <stddef.h>

/* Load path with vocab_size tokens (from the model's header); vocab_size <= 0
 * reads tokens until the end of the file. TOK_OK and *out set, or TOK_EIO,
 * TOK_EFORMAT (truncated or corrupt: the message names the file and the
 * token), TOK_ENOMEM, with a reason in err. */
int tok_llama2c_load(const char *path, int vocab_size, struct tokenizer **out, char *err,
                     size_t errlen);

/* The same from a file's bytes buf[0..len) in memory (the fuzz target uses
 * it; buf is only read during the call); name stands for the file in
 * messages. */
int tok_llama2c_load_buffer(const void *buf, size_t len, const char *name, int vocab_size,
                            struct tokenizer **out, char *err, size_t errlen);

/* The score of token id (for tests and the converter). */
float tok_llama2c_score(const struct tokenizer *t, int32_t id);

#endif
