// peer.mjs: a scripted OpenAI-compatible upstream for Cascade's tests.
//
// It stands in for a remote engine (vLLM, SGLang, cascade-engine) that we do
// not want to run in tests. Its answers are a pure function of the request, so
// a test can compute what the gateway must relay (see peerReply below), and a
// test scripts failures by writing directives into the last user message:
//
//   [[peer:delay_ms=500]]        wait before sending the response headers
//   [[peer:chunk_delay_ms=100]]  wait between stream chunks
//   [[peer:status=500]]          answer with an OpenAI error JSON and that status
//   [[peer:hang]]                never answer (the client must time out)
//   [[peer:close]]               destroy the socket without answering
//   [[peer:close_after=N]]       stream N content chunks, then destroy the socket
//   [[peer:chunks=N]]            reply with exactly N content chunks
//   [[peer:endless]]             a broken upstream that never stops: a stream
//                                sends content chunks forever (max_tokens
//                                ignored), a non-stream answer is a chunked
//                                JSON body whose content never ends; both go
//                                as fast as the reader takes them (the peer
//                                waits for its socket to drain, as a server
//                                does), and stop only when the client closes
//   [[peer:piece_bytes=N]]       with endless: each content piece is N bytes
//                                (default: the reply's words, cycled)
//   combine endless with chunk_delay_ms for a slow drip
//   [[peer@NAME:status=500]]     any directive, applied only by the peer named NAME
//   [[peer:retry_after=V]]       with status: a Retry-After header V (seconds or an HTTP-date)
//
// Answers shaped as vLLM (--enable-auto-tool-choice, a reasoning parser) and
// hosted APIs (OpenAI, DeepSeek) send them (see peerAnswer below):
//   [[peer:tool_call=NAME]]      with a non-empty `tools` in the request: call
//                                tool NAME instead of answering; arguments are
//                                toolArguments(text, 0), streamed as OpenAI
//                                does (a head fragment with index, id, type,
//                                name and arguments "", then the arguments in
//                                several pieces); content null, finish_reason
//                                "tool_calls"
//   [[peer:tool_calls=A,B]]      parallel calls, one per name, in that order
//   [[peer:reasoning]]           DeepSeek's reasoning_content ("think: " + the
//                                text, word by word) before the content
//   a last message of role "tool" is answered with text that quotes the tool
//   results ("tool: " + their contents), never with another call, so an SDK's
//   tool loop (runTools) ends after the second round
//   image_url parts are accepted, and the reply says how many arrived
//   (" images=N" after the echoed text)
//   every chunk and response carries "system_fingerprint": "fp_peer"
//   [[peer:style=vllm]]          a whole response as vLLM writes it: the
//                                message also holds "reasoning_content": null
//                                and "tool_calls": [] when it has none, the
//                                choice "stop_reason": null, the response
//                                "prompt_logprobs": null; tool call ids are
//                                "chatcmpl-tool-<hex>" (see vllmMessage)
//
// Directives are removed from the text before it is echoed. POST /_script
// queues the same directives for the next requests without touching the
// message (useful when the gateway caches or classifies on the text), and
// can script a whole answer:
//   POST /_script {"answer": {"content": null|"...", "reasoning_content": "...",
//                  "tool_calls": [{"id","type","function":{"name","arguments"}}],
//                  "finish_reason": "tool_calls"}, "count": 1}
// (scriptedReply below says exactly what is sent for it), or a whole answer
// token by token with the logprobs an upstream would give each token:
//   POST /_script {"answer": {"tokens": [{"token": " B", "logprob": -0.1,
//                  "top_logprobs": [{"token": " B", "logprob": -0.1}, ...]}, ...]}}
// The content is the tokens joined; each token is one stream chunk (or one
// logprobs.content entry) with its own logprob, and its top_logprobs cut to
// the request's top_logprobs (none when it asked for none), as an upstream
// honours the parameter.
//
// Other endpoints, each a pure function of the request too:
//   POST /v1/completions         text_completion objects (stream or not): the
//                                text is peerReply's for the prompt as the one
//                                user message; legacy logprobs when asked
//                                (see completionReply)
//   POST /v1/embeddings          deterministic vectors (see embeddingReply)
//
// Control endpoints: GET /_stats (counters, the last request body and
// headers), GET /_requests (every recorded request since the last reset,
// each with its path), POST /_reset. The main counters cover POST
// /v1/chat/completions only, since that is what tests count (completions
// and embeddings have their own: completions_requests,
// embeddings_requests): requests (arrived), completed (response fully sent),
// aborted (the client closed before the response ended: how a test sees that
// a client disconnect cancelled the upstream request), active (in flight),
// bytes_sent (bytes of streamed and endless answers written, all requests).
//
// GET /_stats also counts the connections that carried chat requests
// (connections): how a test sees that a client reuses its keep-alive
// connections; with TLS, resumed counts those of them that resumed an
// earlier TLS session instead of a full handshake.
//
// Usage: node peer.mjs [--port N] [--host 127.0.0.1] [--name NAME]
//                      [--models a,b] [--api-key KEY]
//                      [--tls-cert PEM --tls-key PEM]   (serve HTTPS)
//                      [--keep-alive-ms N]  (close idle connections after N ms; default 60000)
// Prints "PEER_PORT=<port>" on stdout once listening. Importing this file as
// a module starts nothing; it exports peerReply(), peerAnswer(),
// scriptedReply(), toolArguments(), toolCallId(), completionReply(),
// embeddingReply() and parseDirectives(), so a test computes what the peer
// sends.

import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { pathToFileURL } from 'node:url';

const DIRECTIVE_RE = /\[\[peer(?:@([A-Za-z0-9_.-]+))?:([a-z_]+)(?:=([^\]]*))?\]\]/g;
const MAX_RECORDED = 1000;
export const PEER_FINGERPRINT = 'fp_peer';

// messageText: the text of one message's content, whether a string or an
// array of content parts (only "text" parts carry text).
function messageText(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .filter((p) => p && p.type === 'text' && typeof p.text === 'string')
      .map((p) => p.text)
      .join('');
  }
  return '';
}

function lastUserText(body) {
  const msgs = Array.isArray(body?.messages) ? body.messages : [];
  for (let i = msgs.length - 1; i >= 0; i--) {
    if (msgs[i]?.role === 'user') return messageText(msgs[i].content);
  }
  return '';
}

// toolResults: the texts of the tool messages that end the conversation
// (one per call answered), or null when the last message is not a tool's.
function toolResults(body) {
  const msgs = Array.isArray(body?.messages) ? body.messages : [];
  if (msgs.length === 0 || msgs[msgs.length - 1]?.role !== 'tool') return null;
  const out = [];
  for (let i = msgs.length - 1; i >= 0 && msgs[i]?.role === 'tool'; i--) out.unshift(messageText(msgs[i].content));
  return out;
}

// imageCount: image_url parts in all messages, as the peer received them.
function imageCount(body) {
  const msgs = Array.isArray(body?.messages) ? body.messages : [];
  let n = 0;
  for (const m of msgs) {
    if (Array.isArray(m?.content)) n += m.content.filter((p) => p && p.type === 'image_url').length;
  }
  return n;
}

// parseDirectives: the directives in `text` that apply to the peer named
// `name`, as {key: value} (value true for a bare flag), and the text with
// every directive removed (including those for other peers).
export function parseDirectives(text, name) {
  const directives = {};
  for (const m of text.matchAll(DIRECTIVE_RE)) {
    const [, target, key, value] = m;
    if (target !== undefined && target !== name) continue;
    directives[key] = value === undefined ? true : value;
  }
  const clean = text.replace(DIRECTIVE_RE, '').replace(/\s+/g, ' ').trim();
  return { directives, clean };
}

function intDirective(d, key, dflt) {
  if (d[key] === undefined) return dflt;
  const v = Number.parseInt(d[key], 10);
  return Number.isFinite(v) && v >= 0 ? v : dflt;
}

// countWords: whitespace-separated words, our stand-in for a tokenizer.
function countWords(s) {
  const m = s.match(/\S+/g);
  return m ? m.length : 0;
}

// peerReply: the deterministic answer to a chat request, as the peer named
// `name` gives it (directives for other peers are ignored).
//   content: "echo: " + the last user message with directives removed, and
//            " images=N" when the request held N image_url parts; when the
//            last message is a tool's: "tool: " + the tool messages' texts
//            joined with " | " instead of the echo;
//   chunks: content split into word-ish pieces ("echo: ", "hello ", "world"):
//           the words, cycled or cut to [[peer:chunks=N]], each but the last
//           followed by one space; then cut to max_tokens;
//   usage: prompt_tokens = words in all messages' text as sent (directives
//          included), completion_tokens = number of chunks;
//   logprob of chunk i: -(i % 5) / 10.
export function peerReply(body, name = 'peer') {
  const { directives, clean } = parseDirectives(lastUserText(body), name);
  const tools = toolResults(body);
  const images = imageCount(body);
  const text = (tools ? 'tool: ' + tools.join(' | ') : 'echo: ' + clean) + (images ? ` images=${images}` : '');
  const base = text.match(/\S+/g);
  let words = base;
  const want = intDirective(directives, 'chunks', -1);
  if (want >= 0) {
    words = [];
    for (let i = 0; i < want; i++) words.push(base[i % base.length]);
  }
  // Each piece carries the space that follows its word, as BPE tokens do.
  let pieces = words.map((w, i) => (i + 1 < words.length ? w + ' ' : w));
  let finishReason = 'stop';
  const maxTokens = body?.max_completion_tokens ?? body?.max_tokens;
  if (Number.isInteger(maxTokens) && maxTokens >= 0 && pieces.length > maxTokens) {
    pieces = pieces.slice(0, maxTokens);
    finishReason = 'length';
  }
  const msgs = Array.isArray(body?.messages) ? body.messages : [];
  const promptTokens = msgs.reduce((n, m) => n + countWords(messageText(m?.content)), 0);
  return {
    directives,
    chunks: pieces,
    content: pieces.join(''),
    finishReason,
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: pieces.length,
      total_tokens: promptTokens + pieces.length,
    },
    logprobs: pieces.map((_, i) => -(i % 5) / 10),
  };
}

// scriptedEntry: the logprobs.content entry of a scripted token (see POST
// /_script's "tokens"), its alternatives cut to nTop.
function scriptedEntry(t, nTop) {
  const token = String(t.token);
  const top = (Array.isArray(t.top_logprobs) ? t.top_logprobs : []).slice(0, Math.max(0, nTop)).map((x) => ({
    token: String(x.token), logprob: x.logprob, bytes: [...Buffer.from(String(x.token), 'utf8')] }));
  return { token, logprob: t.logprob, bytes: [...Buffer.from(token, 'utf8')], top_logprobs: top };
}

// logprobEntry: one OpenAI logprobs.content entry; the chosen token is the
// first alternative, and alternative j is 0.5 * j less likely.
function logprobEntry(token, logprob, nTop) {
  const top = [];
  for (let j = 0; j < nTop; j++) {
    const t = j === 0 ? token : `${token.trim()}~${j}`;
    top.push({ token: t, logprob: logprob - 0.5 * j, bytes: [...Buffer.from(t, 'utf8')] });
  }
  return { token, logprob, bytes: [...Buffer.from(token, 'utf8')], top_logprobs: top };
}

// words: s as word pieces, each but the last followed by one space.
function wordPieces(s) {
  const w = typeof s === 'string' ? s.match(/\S+/g) || [] : [];
  return w.map((x, i) => (i + 1 < w.length ? x + ' ' : x));
}

// argumentPieces: a tool call's arguments as streamed: up to three pieces
// of about equal length (two for a two-character "{}"), cut between code
// points so that each piece is valid UTF-8 on its own.
function argumentPieces(args) {
  const cps = Array.from(args);
  const n = Math.min(3, cps.length);
  if (n <= 1) return [args];
  const size = Math.ceil(cps.length / n);
  const out = [];
  for (let i = 0; i < cps.length; i += size) out.push(cps.slice(i, i + size).join(''));
  return out;
}

// toolArguments: the arguments (a JSON text) of call i made for a request
// whose last user message, directives removed, is `text`.
export function toolArguments(text, i = 0) {
  return JSON.stringify({ query: text, n: i });
}

// toolCallId: the id of call i to tool `name` for that text (OpenAI's
// "call_" form, or vLLM's "chatcmpl-tool-" one; deterministic).
export function toolCallId(name, text, i = 0, style = 'openai') {
  const h = crypto.createHash('sha256').update(`${name}\0${text}\0${i}`).digest('hex');
  return style === 'vllm' ? 'chatcmpl-tool-' + h.slice(0, 32) : 'call_' + h.slice(0, 24);
}

// vllmMessage: a whole message as vLLM's server writes it: every field of
// its schema present, null or empty when unused.
export function vllmMessage(msg) {
  return { role: 'assistant', reasoning_content: null, content: null, tool_calls: [], ...msg };
}

// answerDeltas: the output of a whole assistant message as the stream's
// deltas, one output piece each: reasoning_content word by word (with
// content null beside it, as DeepSeek sends it), then content word by word
// (reasoning_content null beside it when there was reasoning), then per
// tool call a head fragment {index, id, type, function: {name, arguments:
// ""}} and its arguments in pieces {index, function: {arguments}}.
function answerDeltas(msg) {
  const out = [];
  const reasoning = wordPieces(msg.reasoning_content);
  for (const r of reasoning) out.push({ delta: { content: null, reasoning_content: r } });
  for (const c of wordPieces(msg.content)) {
    out.push({ delta: reasoning.length ? { content: c, reasoning_content: null } : { content: c }, content: c });
  }
  (msg.tool_calls || []).forEach((tc, index) => {
    const fn = tc.function || {};
    out.push({ delta: { tool_calls: [{ index, id: tc.id, type: tc.type || 'function',
      function: { name: fn.name, arguments: '' } }] } });
    for (const a of argumentPieces(fn.arguments ?? '')) {
      out.push({ delta: { tool_calls: [{ index, function: { arguments: a } }] } });
    }
  });
  return out;
}

// peerAnswer: the structured answer the peer gives to a chat request, or
// null when it answers with plain text (peerReply). `d` is the request's
// directives merged with a scripted entry (POST /_script), as the peer
// applies them. Returns {deltas, message, finishReason, usage}:
//   deltas: what a stream sends between its role chunk and its finish chunk,
//           each {delta, content?} (content: the text piece, for logprobs);
//   message: the non-stream choices[0].message (role, content -- null when
//           there is none beside tool calls --, reasoning_content,
//           tool_calls);
//   usage: prompt_tokens as peerReply's, completion_tokens = deltas.length;
//   cut to max_tokens deltas (finish_reason "length") like peerReply.
// Modes, first that applies: a scripted answer (d.answer); a tool call
// (d.tool_call / d.tool_calls with tools in the request and a last message
// that is not a tool's); reasoning (d.reasoning) before peerReply's text.
export function peerAnswer(body, name = 'peer', d = undefined) {
  const reply = peerReply(body, name);
  d = d ?? reply.directives;
  const { clean } = parseDirectives(lastUserText(body), name);
  let msg;
  let finishReason;
  if (d.answer && typeof d.answer === 'object') {
    const a = d.answer;
    msg = { role: 'assistant', content: typeof a.content === 'string' ? a.content : null };
    if (Array.isArray(a.tokens)) msg.content = a.tokens.map((t) => String(t.token)).join('');
    if (typeof a.reasoning_content === 'string') msg.reasoning_content = a.reasoning_content;
    if (Array.isArray(a.tool_calls) && a.tool_calls.length) msg.tool_calls = a.tool_calls;
    finishReason = a.finish_reason ?? (msg.tool_calls ? 'tool_calls' : 'stop');
  } else if ((d.tool_call || d.tool_calls) && Array.isArray(body?.tools) && body.tools.length &&
             toolResults(body) === null) {
    const names = String(d.tool_calls ?? d.tool_call).split(',').filter(Boolean);
    msg = { role: 'assistant', content: null };
    if (d.reasoning) msg.reasoning_content = 'think: ' + clean;
    msg.tool_calls = names.map((n, i) => ({ id: toolCallId(n, clean, i, d.style), type: 'function',
      function: { name: n, arguments: toolArguments(clean, i) } }));
    finishReason = 'tool_calls';
  } else if (d.reasoning) {
    const full = peerReply({ ...body, max_tokens: undefined, max_completion_tokens: undefined }, name);
    msg = { role: 'assistant', content: full.content, reasoning_content: 'think: ' + clean };
    finishReason = 'stop';
  } else {
    return null;
  }
  // Scripted tokens go one a delta, each with its logprobs entry (lp).
  let deltas = Array.isArray(d.answer?.tokens)
    ? d.answer.tokens.map((t) => ({ delta: { content: String(t.token) }, content: String(t.token), lp: t }))
    : answerDeltas(msg);
  const maxTokens = body?.max_completion_tokens ?? body?.max_tokens;
  if (Number.isInteger(maxTokens) && maxTokens >= 0 && deltas.length > maxTokens) {
    // what a bounded upstream sends: the first max_tokens pieces
    deltas = deltas.slice(0, maxTokens);
    finishReason = 'length';
    msg = mergeDeltas(deltas);
  }
  const promptTokens = reply.usage.prompt_tokens;
  return {
    deltas,
    message: msg,
    finishReason,
    usage: { prompt_tokens: promptTokens, completion_tokens: deltas.length,
      total_tokens: promptTokens + deltas.length },
  };
}

// mergeDeltas: a message from stream deltas, as an SDK accumulates them.
function mergeDeltas(deltas) {
  const msg = { role: 'assistant', content: null };
  for (const { delta } of deltas) {
    if (typeof delta.content === 'string') msg.content = (msg.content ?? '') + delta.content;
    if (typeof delta.reasoning_content === 'string') {
      msg.reasoning_content = (msg.reasoning_content ?? '') + delta.reasoning_content;
    }
    for (const tc of delta.tool_calls || []) {
      msg.tool_calls ??= [];
      const slot = (msg.tool_calls[tc.index] ??= { id: tc.id, type: tc.type, function: { name: '', arguments: '' } });
      if (tc.function?.name) slot.function.name = tc.function.name;
      slot.function.arguments += tc.function?.arguments ?? '';
    }
  }
  return msg;
}

// scriptedReply: what the peer sends for POST /_script {"answer": answer}
// to the request `body` (see peerAnswer).
export function scriptedReply(answer, body = {}, name = 'peer') {
  return peerAnswer(body, name, { answer });
}

// completionReply: the answer to a /v1/completions request: peerReply's for
// the prompt as the one user message, as legacy text pieces.
export function completionReply(body, name = 'peer') {
  let prompt = body?.prompt;
  if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
  const chat = { messages: [{ role: 'user', content: typeof prompt === 'string' ? prompt : '' }],
    max_tokens: body?.max_tokens };
  return peerReply(chat, name);
}

// embeddingReply: the answer to a /v1/embeddings request: one vector per
// input string, `dimensions` long (default 8), each value in [-1, 1] taken
// from the SHA-256 of the string (4 decimals); usage.prompt_tokens = words
// in all inputs. null for an input that is not a string or strings.
export function embeddingReply(body) {
  const inputs = typeof body?.input === 'string' ? [body.input] : body?.input;
  if (!Array.isArray(inputs) || inputs.length === 0 || !inputs.every((x) => typeof x === 'string')) return null;
  const dims = Number.isInteger(body.dimensions) && body.dimensions > 0 && body.dimensions <= 4096 ? body.dimensions : 8;
  const vector = (text) => {
    const out = [];
    for (let k = 0; out.length < dims; k++) {
      const h = crypto.createHash('sha256').update(`${k}\0${text}`).digest();
      for (let j = 0; j + 1 < h.length && out.length < dims; j += 2) {
        out.push(Math.round(((h.readUInt16BE(j) / 65535) * 2 - 1) * 10000) / 10000);
      }
    }
    return out;
  };
  const tokens = inputs.reduce((n, x) => n + countWords(x), 0);
  return {
    object: 'list',
    data: inputs.map((x, index) => ({ object: 'embedding', index, embedding: vector(x) })),
    model: typeof body.model === 'string' ? body.model : 'peer-model',
    usage: { prompt_tokens: tokens, total_tokens: tokens },
  };
}

function errorType(status) {
  if (status === 400) return 'invalid_request_error';
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 404) return 'not_found_error';
  if (status === 429) return 'rate_limit_error';
  return status >= 500 ? 'server_error' : 'invalid_request_error';
}

function errorBody(status, message) {
  return JSON.stringify({
    error: { message, type: errorType(status), param: null, code: null },
  });
}

function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', name: 'peer', models: ['peer-model'], apiKey: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--port') opts.port = Number.parseInt(v, 10), i++;
    else if (a === '--host') opts.host = v, i++;
    else if (a === '--name') opts.name = v, i++;
    else if (a === '--models') opts.models = v.split(',').filter(Boolean), i++;
    else if (a === '--api-key') opts.apiKey = v, i++;
    else if (a === '--tls-cert') opts.tlsCert = v, i++;
    else if (a === '--tls-key') opts.tlsKey = v, i++;
    else if (a === '--keep-alive-ms') opts.keepAliveMs = Number.parseInt(v, 10), i++;
    else {
      process.stderr.write(`peer: unknown argument ${a}\n`);
      process.exit(2);
    }
  }
  return opts;
}

export function createPeer(opts) {
  const st = {
    requests: 0, completed: 0, aborted: 0, active: 0,
    lastRequest: null, lastHeaders: null, recorded: [],
    script: [],             // queued directive sets from POST /_script
    healthStatus: 200,
    seq: 0,
    bytesSent: 0,
    completions: 0,         // POST /v1/completions arrived
    embeddings: 0,          // POST /v1/embeddings arrived
    connections: 0,         // connections that carried a POST /v1/chat/completions
    resumed: 0,             // of them, TLS connections that resumed a session
    chatSockets: new WeakSet(),
  };

  function sendJson(res, status, obj, headers = {}) {
    const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
    res.writeHead(status, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      ...headers,
    });
    res.end(body);
  }

  function readBody(req) {
    return new Promise((resolve, reject) => {
      const parts = [];
      req.on('data', (c) => parts.push(c));
      req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
      req.on('error', reject);
    });
  }

  // A chat request's life: wait delay_ms, then answer in one of the scripted
  // ways. Timers are tracked so that an abort stops everything at once.
  function handleChat(req, res, raw) {
    st.requests++;
    st.active++;
    let ended = false;       // counted exactly once, as completed or aborted
    let selfClosed = false;  // we destroyed the socket on purpose: not an abort
    const timers = new Set();
    const later = (ms, fn) => {
      const t = setTimeout(() => { timers.delete(t); fn(); }, ms);
      timers.add(t);
    };
    res.on('finish', () => {
      if (ended) return;
      ended = true;
      st.active--;
      st.completed++;
    });
    res.on('close', () => {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      if (ended) return;
      ended = true;
      st.active--;
      if (!selfClosed) st.aborted++;
    });

    let body;
    try {
      body = JSON.parse(raw);
    } catch {
      body = null;
    }
    st.lastRequest = body;
    st.lastHeaders = req.headers;
    st.recorded.push({ path: '/v1/chat/completions', body, headers: req.headers, raw: body === null ? raw : undefined });
    if (st.recorded.length > MAX_RECORDED) st.recorded.shift();

    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      sendJson(res, 400, errorBody(400, 'peer: request body is not a JSON object'));
      return;
    }
    if (opts.apiKey && req.headers.authorization !== `Bearer ${opts.apiKey}`) {
      sendJson(res, 401, errorBody(401, 'peer: invalid API key'));
      return;
    }
    if (!Array.isArray(body.messages) || body.messages.length === 0) {
      sendJson(res, 400, errorBody(400, 'peer: messages must be a non-empty array'));
      return;
    }

    const reply = peerReply(body, opts.name);
    const d = { ...(st.script.length ? st.script.shift() : {}), ...reply.directives };
    const structured = peerAnswer(body, opts.name, d);
    const id = `chatcmpl-peer-${opts.name}-${++st.seq}`;
    const created = Math.floor(Date.now() / 1000);
    const model = typeof body.model === 'string' ? body.model : 'peer-model';
    const wantLogprobs = body.logprobs === true;
    const nTop = wantLogprobs && Number.isInteger(body.top_logprobs) ? body.top_logprobs : 0;

    const answer = () => {
      if (d.hang) return;
      if (d.close) {
        selfClosed = true;
        req.socket.destroy();
        return;
      }
      const status = intDirective(d, 'status', 200);
      if (status !== 200) {
        sendJson(res, status, errorBody(status, `peer ${opts.name}: scripted status ${status}`),
          d.retry_after !== undefined ? { 'Retry-After': String(d.retry_after) } : {});
        return;
      }
      if (d.endless) endlessReply(body.stream === true);
      else if (structured && body.stream === true) structuredStream();
      else if (structured) structuredFull();
      else if (body.stream === true) streamReply();
      else fullReply();
    };

    // A broken upstream: output that never ends. write() returning false
    // means the socket is full; wait for 'drain' as a real server would,
    // so what the peer sends measures what its reader takes.
    const endlessReply = (stream) => {
      const chunkDelay = intDirective(d, 'chunk_delay_ms', 0);
      const pieceBytes = intDirective(d, 'piece_bytes', 0);
      const piece = (i) => (pieceBytes > 0 ? 'x'.repeat(pieceBytes - 1) + ' ' : reply.chunks[i % reply.chunks.length] || 'x ');
      const write = (text) => {
        st.bytesSent += Buffer.byteLength(text);
        return res.write(text);
      };
      let n = 0;
      let closed = false;
      res.on('close', () => { closed = true; });
      let next;
      if (stream) {
        res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
        const ev = (choices) => `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model,
          system_fingerprint: PEER_FINGERPRINT, choices })}\n\n`;
        write(ev([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
        next = () => {
          const c = piece(n);
          const logprobs = wantLogprobs ? { content: [logprobEntry(c, -(n % 5) / 10, nTop)] } : null;
          n++;
          return ev([{ index: 0, delta: { content: c }, logprobs, finish_reason: null }]);
        };
      } else {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        write(`{"id":"${id}","object":"chat.completion","created":${created},"model":${JSON.stringify(model)},` +
          '"choices":[{"index":0,"finish_reason":null,"message":{"role":"assistant","content":"');
        next = () => piece(n++).repeat(64);
      }
      const pump = () => {
        while (!closed) {
          if (!write(next())) {
            res.once('drain', pump);
            return;
          }
          if (chunkDelay > 0) {
            later(chunkDelay, pump);
            return;
          }
        }
      };
      pump();
    };

    // A whole response; vLLM's style adds its always-present fields.
    const sendWhole = (message, logprobs, finishReason, usage) => {
      const vllm = d.style === 'vllm';
      const choice = { index: 0, message: vllm ? vllmMessage(message) : message, logprobs, finish_reason: finishReason };
      if (vllm) choice.stop_reason = null;
      const obj = { id, object: 'chat.completion', created, model, system_fingerprint: PEER_FINGERPRINT,
        choices: [choice], usage };
      if (vllm) obj.prompt_logprobs = null;
      sendJson(res, 200, obj);
    };

    const fullReply = () => {
      const message = { role: 'assistant', content: reply.content };
      const logprobs = wantLogprobs
        ? { content: reply.chunks.map((c, i) => logprobEntry(c, reply.logprobs[i], nTop)) }
        : null;
      sendWhole(message, logprobs, reply.finishReason, reply.usage);
    };

    // A structured answer (peerAnswer) in one response: content null beside
    // tool calls, as OpenAI and vLLM send it.
    const structuredFull = () => {
      const pieces = structured.deltas.filter((x) => typeof x.content === 'string');
      const logprobs = wantLogprobs
        ? { content: pieces.map((x, i) => (x.lp ? scriptedEntry(x.lp, nTop) : logprobEntry(x.content, -(i % 5) / 10, nTop))) }
        : null;
      sendWhole(structured.message, logprobs, structured.finishReason, structured.usage);
    };

    // The same as a stream: a role chunk, one chunk per delta, the finish
    // chunk, the usage chunk when asked, [DONE]; chunk_delay_ms and
    // close_after (counting deltas) apply as for plain text.
    const structuredStream = () => {
      const includeUsage = body.stream_options?.include_usage === true;
      const chunkDelay = intDirective(d, 'chunk_delay_ms', 0);
      const closeAfter = intDirective(d, 'close_after', -1);
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      const event = (choices, extra = {}) => {
        const obj = { id, object: 'chat.completion.chunk', created, model, system_fingerprint: PEER_FINGERPRINT,
          choices, ...extra };
        if (includeUsage && !('usage' in obj)) obj.usage = null;
        const text = `data: ${JSON.stringify(obj)}\n\n`;
        st.bytesSent += Buffer.byteLength(text);
        res.write(text);
      };
      const hasText = structured.deltas.some((x) => typeof x.content === 'string');
      event([{ index: 0, delta: { role: 'assistant', content: hasText ? '' : null }, logprobs: null,
        finish_reason: null }]);
      let i = 0;
      let k = 0; // content pieces so far, for their logprobs
      const step = () => {
        for (;;) {
          if (i === closeAfter) {
            selfClosed = true;
            req.socket.end();
            return;
          }
          if (i >= structured.deltas.length) break;
          const x = structured.deltas[i++];
          let logprobs = null;
          if (wantLogprobs && typeof x.content === 'string') {
            logprobs = { content: [x.lp ? scriptedEntry(x.lp, nTop) : logprobEntry(x.content, -(k % 5) / 10, nTop)] };
            k++;
          }
          event([{ index: 0, delta: x.delta, logprobs, finish_reason: null }]);
          if (chunkDelay > 0) {
            later(chunkDelay, step);
            return;
          }
        }
        event([{ index: 0, delta: {}, logprobs: null, finish_reason: structured.finishReason }]);
        if (includeUsage) event([], { usage: structured.usage });
        res.end('data: [DONE]\n\n');
      };
      if (chunkDelay > 0) later(chunkDelay, step);
      else step();
    };

    // Chunked SSE as vLLM and SGLang send it: a role chunk, one chunk per
    // piece, a finish chunk, the usage chunk when asked, then [DONE].
    const streamReply = () => {
      const includeUsage = body.stream_options?.include_usage === true;
      const chunkDelay = intDirective(d, 'chunk_delay_ms', 0);
      const closeAfter = intDirective(d, 'close_after', -1);
      res.writeHead(200, {
        'Content-Type': 'text/event-stream',
        'Cache-Control': 'no-cache',
      });
      const event = (choices, extra = {}) => {
        const obj = { id, object: 'chat.completion.chunk', created, model, system_fingerprint: PEER_FINGERPRINT,
          choices, ...extra };
        if (includeUsage && !('usage' in obj)) obj.usage = null;
        const text = `data: ${JSON.stringify(obj)}\n\n`;
        st.bytesSent += Buffer.byteLength(text);
        res.write(text);
      };
      event([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
      let i = 0;
      // A loop, not recursion: thousands of chunks must not overflow the stack.
      const step = () => {
        for (;;) {
          if (i === closeAfter) {
            // end(), not destroy(): what was written still reaches the client,
            // then the stream stops without its terminating chunk
            selfClosed = true;
            req.socket.end();
            return;
          }
          if (i >= reply.chunks.length) break;
          const c = reply.chunks[i];
          const logprobs = wantLogprobs
            ? { content: [logprobEntry(c, reply.logprobs[i], nTop)] }
            : null;
          event([{ index: 0, delta: { content: c }, logprobs, finish_reason: null }]);
          i++;
          if (chunkDelay > 0) {
            later(chunkDelay, step);
            return;
          }
        }
        event([{ index: 0, delta: {}, logprobs: null, finish_reason: reply.finishReason }]);
        if (includeUsage) event([], { usage: reply.usage });
        res.end('data: [DONE]\n\n');
      };
      if (chunkDelay > 0) later(chunkDelay, step);
      else step();
    };

    const delay = intDirective(d, 'delay_ms', 0);
    if (delay > 0) later(delay, answer);
    else answer();
  }

  // Record a request of another endpoint (its body, or null when it is not
  // JSON). The /_script queue is shared by all endpoints: an entry goes to
  // the next request of any of them.
  function recordOther(path, req, raw) {
    let body;
    try {
      body = JSON.parse(raw);
    } catch {
      body = null;
    }
    st.lastRequest = body;
    st.lastHeaders = req.headers;
    st.recorded.push({ path, body, headers: req.headers, raw: body === null ? raw : undefined });
    if (st.recorded.length > MAX_RECORDED) st.recorded.shift();
    return body;
  }

  function scriptedStatus(res, d) {
    const status = intDirective(d, 'status', 200);
    if (status === 200) return false;
    sendJson(res, status, errorBody(status, `peer ${opts.name}: scripted status ${status}`));
    return true;
  }

  // /v1/completions as vLLM serves it: text_completion objects, the legacy
  // logprobs object when `logprobs` is an integer.
  function handleCompletions(req, res, raw) {
    st.completions++;
    const body = recordOther('/v1/completions', req, raw);
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      sendJson(res, 400, errorBody(400, 'peer: request body is not a JSON object'));
      return;
    }
    let prompt = body.prompt;
    if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
    if (typeof prompt !== 'string') {
      sendJson(res, 400, errorBody(400, 'peer: prompt must be a string'));
      return;
    }
    if (body.messages !== undefined) {
      sendJson(res, 400, errorBody(400, 'peer: messages is not a completions field'));
      return;
    }
    const reply = completionReply(body, opts.name);
    const d = { ...(st.script.length ? st.script.shift() : {}), ...reply.directives };
    if (scriptedStatus(res, d)) return;
    const id = `cmpl-peer-${opts.name}-${++st.seq}`;
    const created = Math.floor(Date.now() / 1000);
    const model = typeof body.model === 'string' ? body.model : 'peer-model';
    const nTop = Number.isInteger(body.logprobs) ? body.logprobs : -1;
    const legacy = (pieces, first) => {
      if (nTop < 0) return null;
      const lp = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
      let off = pieces.offset;
      pieces.list.forEach((p, j) => {
        const e = logprobEntry(p, reply.logprobs[first + j], nTop);
        lp.tokens.push(p);
        lp.token_logprobs.push(e.logprob);
        lp.top_logprobs.push(Object.fromEntries(e.top_logprobs.map((t) => [t.token, t.logprob])));
        lp.text_offset.push(off);
        off += p.length;
      });
      return lp;
    };
    if (body.stream !== true) {
      sendJson(res, 200, {
        id, object: 'text_completion', created, model, system_fingerprint: PEER_FINGERPRINT,
        choices: [{ index: 0, text: reply.content, logprobs: legacy({ list: reply.chunks, offset: 0 }, 0),
          finish_reason: reply.finishReason }],
        usage: reply.usage,
      });
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    const event = (choices, extra = {}) => {
      res.write(`data: ${JSON.stringify({ id, object: 'text_completion', created, model,
        system_fingerprint: PEER_FINGERPRINT, choices, ...extra })}\n\n`);
    };
    let off = 0;
    reply.chunks.forEach((c, i) => {
      event([{ index: 0, text: c, logprobs: legacy({ list: [c], offset: off }, i), finish_reason: null }]);
      off += c.length;
    });
    event([{ index: 0, text: '', logprobs: null, finish_reason: reply.finishReason }]);
    if (body.stream_options?.include_usage === true) event([], { usage: reply.usage });
    res.end('data: [DONE]\n\n');
  }

  function handleEmbeddings(req, res, raw) {
    st.embeddings++;
    const body = recordOther('/v1/embeddings', req, raw);
    const d = st.script.length ? st.script.shift() : {};
    if (scriptedStatus(res, d)) return;
    // {"directives": {"raw_answer": <any JSON>}}: a broken upstream's 200.
    if (d.raw_answer !== undefined) {
      sendJson(res, 200, d.raw_answer);
      return;
    }
    const reply = body && typeof body === 'object' ? embeddingReply(body) : null;
    if (!reply) {
      sendJson(res, 400, errorBody(400, 'peer: input must be a string or an array of strings'));
      return;
    }
    if (body.encoding_format === 'base64') {
      for (const e of reply.data) e.embedding = Buffer.from(new Float32Array(e.embedding).buffer).toString('base64');
    }
    // {"directives": {"answer_model": "x"}}: call the model something else,
    // as hosted APIs do (a dated snapshot name), so a test sees the gateway
    // put the tier's model id back.
    if (typeof d.answer_model === 'string') reply.model = d.answer_model;
    sendJson(res, 200, reply);
  }

  const tls = opts.tlsCert ? { cert: readFileSync(opts.tlsCert), key: readFileSync(opts.tlsKey) } : {};
  const server = (opts.tlsCert ? https : http).createServer({ noDelay: true, keepAliveTimeout: opts.keepAliveMs ?? 60000, ...tls }, async (req, res) => {
    const url = new URL(req.url, 'http://peer');
    let raw;
    try {
      raw = await readBody(req);
    } catch {
      return;
    }
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case 'POST /v1/chat/completions':
        if (!st.chatSockets.has(req.socket)) {
          st.chatSockets.add(req.socket);
          st.connections++;
          if (req.socket.isSessionReused?.()) st.resumed++;
        }
        handleChat(req, res, raw);
        return;
      case 'POST /v1/completions':
        handleCompletions(req, res, raw);
        return;
      case 'POST /v1/embeddings':
        handleEmbeddings(req, res, raw);
        return;
      case 'GET /v1/models':
        sendJson(res, 200, {
          object: 'list',
          data: opts.models.map((m) => ({ id: m, object: 'model', created: 0, owned_by: opts.name })),
        });
        return;
      case 'GET /health':
        sendJson(res, st.healthStatus, { status: st.healthStatus === 200 ? 'ok' : 'unhealthy' });
        return;
      case 'GET /_stats':
        sendJson(res, 200, {
          name: opts.name,
          requests: st.requests,
          completed: st.completed,
          aborted: st.aborted,
          active: st.active,
          bytes_sent: st.bytesSent,
          connections: st.connections,
          resumed: st.resumed,
          completions_requests: st.completions,
          embeddings_requests: st.embeddings,
          last_request: st.lastRequest,
          last_headers: st.lastHeaders,
        });
        return;
      case 'GET /_requests':
        sendJson(res, 200, st.recorded);
        return;
      case 'POST /_reset':
        st.requests = st.completed = st.aborted = st.bytesSent = st.completions = st.embeddings = 0;
        st.connections = st.resumed = 0;
        st.lastRequest = st.lastHeaders = null;
        st.recorded = [];
        st.script = [];
        st.healthStatus = 200;
        sendJson(res, 200, { ok: true });
        return;
      case 'POST /_script': {
        // {"directives": {"status": "500"}, "count": 2, "health_status": 503}
        let s;
        try {
          s = JSON.parse(raw || '{}');
        } catch {
          sendJson(res, 400, errorBody(400, 'peer: /_script body is not JSON'));
          return;
        }
        if (Number.isInteger(s.health_status)) st.healthStatus = s.health_status;
        // {"answer": {...}} scripts a whole answer (peerAnswer), alone or
        // beside directives
        const answer = s.answer && typeof s.answer === 'object' ? { answer: s.answer } : null;
        if ((s.directives && typeof s.directives === 'object') || answer) {
          const n = Number.isInteger(s.count) ? s.count : 1;
          for (let k = 0; k < n; k++) st.script.push({ ...(s.directives || {}), ...(answer || {}) });
        }
        sendJson(res, 200, { ok: true, queued: st.script.length });
        return;
      }
      default:
        sendJson(res, 404, errorBody(404, `peer: no route ${route}`));
    }
  });
  return server;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const server = createPeer(opts);
  server.listen(opts.port, opts.host, () => {
    process.stdout.write(`PEER_PORT=${server.address().port}\n`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main();
}
