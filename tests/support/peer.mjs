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
//
// Directives are removed from the text before it is echoed. POST /_script
// queues the same directives for the next requests without touching the
// message (useful when the gateway caches or classifies on the text).
//
// Control endpoints: GET /_stats (counters, the last request body and
// headers), GET /_requests (every recorded request since the last reset),
// POST /_reset. Counters cover POST /v1/chat/completions only, since that is
// what tests count: requests (arrived), completed (response fully sent),
// aborted (the client closed before the response ended: how a test sees that
// a client disconnect cancelled the upstream request), active (in flight),
// bytes_sent (bytes of streamed and endless answers written, all requests).
//
// Usage: node peer.mjs [--port N] [--host 127.0.0.1] [--name NAME]
//                      [--models a,b] [--api-key KEY]
// Prints "PEER_PORT=<port>" on stdout once listening. Importing this file as
// a module starts nothing; it exports peerReply() and parseDirectives().

import http from 'node:http';
import { pathToFileURL } from 'node:url';

const DIRECTIVE_RE = /\[\[peer(?:@([A-Za-z0-9_.-]+))?:([a-z_]+)(?:=([^\]]*))?\]\]/g;
const MAX_RECORDED = 1000;

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
//   content: "echo: " + the last user message with directives removed;
//   chunks: content split into word-ish pieces ("echo: ", "hello ", "world"):
//           the words, cycled or cut to [[peer:chunks=N]], each but the last
//           followed by one space; then cut to max_tokens;
//   usage: prompt_tokens = words in all messages' text as sent (directives
//          included), completion_tokens = number of chunks;
//   logprob of chunk i: -(i % 5) / 10.
export function peerReply(body, name = 'peer') {
  const { directives, clean } = parseDirectives(lastUserText(body), name);
  const base = ('echo: ' + clean).match(/\S+/g);
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
  };

  function sendJson(res, status, obj) {
    const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
    res.writeHead(status, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
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
    st.recorded.push({ body, headers: req.headers, raw: body === null ? raw : undefined });
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
        sendJson(res, status, errorBody(status, `peer ${opts.name}: scripted status ${status}`));
        return;
      }
      if (d.endless) endlessReply(body.stream === true);
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
        const ev = (choices) => `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices })}\n\n`;
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

    const fullReply = () => {
      const message = { role: 'assistant', content: reply.content };
      const logprobs = wantLogprobs
        ? { content: reply.chunks.map((c, i) => logprobEntry(c, reply.logprobs[i], nTop)) }
        : null;
      sendJson(res, 200, {
        id, object: 'chat.completion', created, model,
        choices: [{ index: 0, message, logprobs, finish_reason: reply.finishReason }],
        usage: reply.usage,
      });
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
        const obj = { id, object: 'chat.completion.chunk', created, model, choices, ...extra };
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

  const server = http.createServer({ noDelay: true, keepAliveTimeout: 60000 }, async (req, res) => {
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
        handleChat(req, res, raw);
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
          last_request: st.lastRequest,
          last_headers: st.lastHeaders,
        });
        return;
      case 'GET /_requests':
        sendJson(res, 200, st.recorded);
        return;
      case 'POST /_reset':
        st.requests = st.completed = st.aborted = st.bytesSent = 0;
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
        if (s.directives && typeof s.directives === 'object') {
          const n = Number.isInteger(s.count) ? s.count : 1;
          for (let k = 0; k < n; k++) st.script.push({ ...s.directives });
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
