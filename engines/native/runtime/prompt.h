/* prompt.h: how text and chat messages become a model's prompt ids.
 *
 * Chat formatting lives here and nowhere else:
 *   - PROMPT_PLAIN (llama2.c tokenizers: the stories models): no template.
 *     A chat uses the last user message's text as the prompt, as the model's
 *     README says; the prompt is BOS, then that text encoded (with its
 *     dummy-prefix space).
 *   - PROMPT_DEEPSEEK (tokenizer.json models whose vocabulary has the
 *     <｜User｜> and <｜Assistant｜> markers): DeepSeek's chat template
 *     (chat_template.h) with the generation prompt; system and developer
 *     messages are both system turns. A tokenizer.json without the markers
 *     gets PROMPT_PLAIN.
 * A raw completion prompt is BOS then the text, in either style, unless the
 * tokenizer_config.json beside a tokenizer.json says "add_bos_token": false
 * (PROMPT_NO_BOS is then set in the style; the chat template still starts
 * with BOS, as DeepSeek's own template does).
 * User text is encoded without special tokens, so it cannot forge markers.
 *
 * The tokenizer of a model is found here too: an explicit path, else beside
 * the model: tokenizer.json (BPE), tokenizer.bin, then tok<vocab>.bin.
 *
 * Pure functions over read-only tokenizers: any thread may call them.
 */
#ifndef CASCADE_NATIVE_PROMPT_H
#define CASCADE_NATIVE_PROMPT_H

#include "common/openai.h"
#include "engines/native/model/model.h"
#include "tokenizer/tokenizer.h"

#include <stddef.h>

enum prompt_style {
    PROMPT_PLAIN = 0,
    PROMPT_DEEPSEEK = 1,
    PROMPT_NO_BOS = 2,      /* a flag on either: raw prompts start without BOS */
};

/* Load the tokenizer for m (path may be NULL: look beside the model). 0, or
 * -1 with a message naming what was tried. */
int prompt_tokenizer_load(const struct native_model *m, const char *path, struct tokenizer **out,
                          enum prompt_style *style, char *err, size_t errlen);

/* Append the prompt ids of a chat to out. TOK_OK, TOK_EINVAL (invalid
 * UTF-8, unknown role), TOK_ENOMEM. */
int prompt_encode_chat(const struct tokenizer *t, enum prompt_style style,
                       const struct chat_message *msgs, size_t n, struct tok_ids *out);

/* Append BOS (unless style has PROMPT_NO_BOS) and the ids of text. Same returns. */
int prompt_encode_text(const struct tokenizer *t, enum prompt_style style, const char *text,
                       size_t len, struct tok_ids *out);

#endif
