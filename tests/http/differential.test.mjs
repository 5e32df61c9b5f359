// differential.test.mjs: our HTTP/1.1 request parser (common/http1.c, via
// the http1_dump harness) against Node's own parser, llhttp, in its default
// strict mode, on a corpus of tricky requests generated below.
//
// Each case's bytes go (1) to http1_dump on stdin and (2) to a real Node
// http.Server over a TCP socket. The accept/reject verdicts must agree, and
// for accepted requests so must the method, target, header lines and body.
//
// Where we are stricter on purpose, the case carries `stricter: reason`: we
// must refuse it, whatever Node does. Every such case is listed, with its
// reason, in docs/http1-strictness.md. Where Node refuses something in a way
// that is not a parse error (its Host check in JS), that counts as a refusal.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SOURCE_DIR = process.env.CASCADE_SOURCE_DIR || path.resolve(HERE, '..', '..');
const BUILD_DIR = process.env.CASCADE_BUILD_DIR || path.join(SOURCE_DIR, 'build');
const DUMP = path.join(BUILD_DIR, 'tests', 'http', 'http1_dump');

// ---- the corpus ----------------------------------------------------------

const CASES = [];
const add = (name, text, extra = {}) => CASES.push({ name, bytes: Buffer.from(text, 'latin1'), ...extra });

const H = 'Host: example.com\r\n';
const GET = (extra = '') => `GET /v1/models HTTP/1.1\r\n${H}${extra}\r\n`;
const chunkedPost = (body, extra = '') =>
  `POST /v1/chat/completions HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n${extra}\r\n${body}`;
const clPost = (cl, body) => `POST /p HTTP/1.1\r\n${H}Content-Length: ${cl}\r\n\r\n${body}`;

// 1. plain valid requests
add('get', GET());
add('get query', `GET /a/b?x=1&y=%20z HTTP/1.1\r\n${H}\r\n`);
add('get 1.0 no host', 'GET / HTTP/1.0\r\n\r\n');
add('get 1.0 with host', `GET / HTTP/1.0\r\n${H}\r\n`);
add('head', `HEAD / HTTP/1.1\r\n${H}\r\n`);
add('delete', `DELETE /x HTTP/1.1\r\n${H}\r\n`);
add('options path', `OPTIONS /x HTTP/1.1\r\n${H}\r\n`);
add('put cl', `PUT /x HTTP/1.1\r\n${H}Content-Length: 3\r\n\r\nabc`);
add('patch cl', `PATCH /x HTTP/1.1\r\n${H}Content-Length: 2\r\n\r\nhi`);
add('post cl', clPost(5, 'hello'));
add('post cl 0', clPost(0, ''));
add('post cl leading zeros', clPost('005', 'hello'));
add('post chunked', chunkedPost('5\r\nhello\r\n0\r\n\r\n'));
add('post chunked two', chunkedPost('5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n'));
add('post chunked upper hex', chunkedPost('A\r\n0123456789\r\n0\r\n\r\n'));
add('post chunked lower hex', chunkedPost('a\r\n0123456789\r\n0\r\n\r\n'));
add('post chunked zero-padded size', chunkedPost('0005\r\nhello\r\n0\r\n\r\n'));
add('post chunked 16-digit size', chunkedPost('0000000000000005\r\nhello\r\n0\r\n\r\n'));
add('post chunked empty', chunkedPost('0\r\n\r\n'));
add('te upper case', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: CHUNKED\r\n\r\n1\r\na\r\n0\r\n\r\n`);
add('many headers', `GET / HTTP/1.1\r\n${H}${Array.from({ length: 40 }, (_, i) => `X-H${i}: v${i}\r\n`).join('')}\r\n`);
add('header ows', `GET / HTTP/1.1\r\n${H}X-A:   spaced   \r\nX-B:\tt\t\r\n\r\n`);
add('header empty value', `GET / HTTP/1.1\r\n${H}X-Empty:\r\n\r\n`);
add('header obs-text value', `GET / HTTP/1.1\r\n${H}X-L: caf\xe9 \xff\x80\r\n\r\n`);
add('header htab inside value', `GET / HTTP/1.1\r\n${H}X-T: a\tb\r\n\r\n`);
add('header tchars in name', `GET / HTTP/1.1\r\n${H}X-!#$%&'*+.^_\`|~: v\r\n\r\n`);
add('leading crlf', `\r\n${GET()}`);
add('connection close', GET('Connection: close\r\n'));
add('expect 100-continue', `POST / HTTP/1.1\r\n${H}Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok`);
add('empty host', `GET / HTTP/1.1\r\nHost:\r\n\r\n`);
add('host with port', `GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n`);

// 2. every control character, and DEL, at each place of a request
const places = {
  'in method': (c) => `GE${c}T / HTTP/1.1\r\n${H}\r\n`,
  'in target': (c) => `GET /a${c}b HTTP/1.1\r\n${H}\r\n`,
  'in version': (c) => `GET / HTTP/1.${c}1\r\n${H}\r\n`,
  'in header name': (c) => `GET / HTTP/1.1\r\n${H}X-A${c}b: v\r\n\r\n`,
  'in header value': (c) => `GET / HTTP/1.1\r\n${H}X-A: v${c}w\r\n\r\n`,
  'at value start': (c) => `GET / HTTP/1.1\r\n${H}X-A: ${c}w\r\n\r\n`,
  'in host value': (c) => `GET / HTTP/1.1\r\nHost: exa${c}mple.com\r\n\r\n`,
  'in chunk data line end': (c) => chunkedPost(`1\r\na${c}\r\n0\r\n\r\n`),
};
const ctls = [...Array.from({ length: 32 }, (_, i) => i), 0x7f];
for (const [where, make] of Object.entries(places)) {
  for (const code of ctls) {
    const c = String.fromCharCode(code);
    add(`ctl 0x${code.toString(16)} ${where}`, make(c));
  }
}
add('nul alone then crlfcrlf', '\0\r\n\r\n');
add('nul at start of head', `\0${GET()}`);

// 3. line endings
add('bare lf everywhere', 'GET / HTTP/1.1\nHost: example.com\n\n');
add('bare lf after request line', `GET / HTTP/1.1\n${H}\r\n`);
add('bare lf after header', `GET / HTTP/1.1\r\nHost: example.com\n\r\n`);
add('bare lf final line', `GET / HTTP/1.1\r\n${H}\n`);
add('bare cr after request line', `GET / HTTP/1.1\r${H}\r\n`);
add('bare cr in header', `GET / HTTP/1.1\r\n${H}X-A: a\rb\r\n\r\n`);
add('bare cr final line', `GET / HTTP/1.1\r\n${H}\r\r\n`);
add('leading bare lf', `\n${GET()}`, { stricter: 'a bare LF is never a line end here, not even before the request line' });

// 4. obs-fold and odd header lines
add('obs-fold sp', `GET / HTTP/1.1\r\n${H}X-A: a\r\n b\r\n\r\n`);
add('obs-fold htab', `GET / HTTP/1.1\r\n${H}X-A: a\r\n\tb\r\n\r\n`);
add('space before colon', `GET / HTTP/1.1\r\n${H}X-A : v\r\n\r\n`);
add('tab before colon', `GET / HTTP/1.1\r\n${H}X-A\t: v\r\n\r\n`);
add('empty header name', `GET / HTTP/1.1\r\n${H}: v\r\n\r\n`);
add('no colon', `GET / HTTP/1.1\r\n${H}X-A v\r\n\r\n`);
add('at in name', `GET / HTTP/1.1\r\n${H}X@A: v\r\n\r\n`);
add('paren in name', `GET / HTTP/1.1\r\n${H}X(A): v\r\n\r\n`);
add('non-ascii in name', `GET / HTTP/1.1\r\n${H}X\xe9: v\r\n\r\n`);
add('first header line starts with space', `GET / HTTP/1.1\r\n Host: example.com\r\n\r\n`);

// 5. Host
add('missing host 1.1', 'GET / HTTP/1.1\r\n\r\n');
add('missing host 1.1 with headers', 'GET / HTTP/1.1\r\nX-A: b\r\n\r\n');
add('two hosts different', `GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`,
  { stricter: 'RFC 9112 3.2: a server MUST respond 400 to more than one Host; a proxy may route by the other one' });
add('two hosts same', `GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n`,
  { stricter: 'RFC 9112 3.2: more than one Host is a 400, even when equal' });
add('two hosts 1.0', `GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n`,
  { stricter: 'more than one Host is ambiguous in any version' });
add('host case', `GET / HTTP/1.1\r\nhOsT: a\r\n\r\n`);

// 6. Transfer-Encoding and Content-Length
add('te and cl', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n`);
add('cl and te', `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`);
add('two te headers', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
  { stricter: 'one Transfer-Encoding header only: two are joined by some parsers and not by others' });
add('two te gzip then chunked', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
  { stricter: 'one Transfer-Encoding header only; and we decode no coding but chunked (501)' });
add('te gzip, chunked', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
  { stricter: 'we decode no coding but chunked: RFC 9112 6.1 lets a server answer 501' });
add('te chunked, gzip', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n`);
add('te chunked, chunked', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n`,
  { stricter: 'RFC 9112 6.1: chunked MUST NOT be applied more than once' });
add('te identity', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: identity\r\n\r\n`);
add('te gzip alone', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n\r\n`);
add('te xchunked', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n`);
add('te chunkedx', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n`);
add('te empty', `POST / HTTP/1.1\r\n${H}Transfer-Encoding:\r\n\r\n`,
  { stricter: 'an empty Transfer-Encoding names no final chunked: refused rather than read as no body' });
add('te leading comma', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n`,
  { stricter: 'an empty list element in Transfer-Encoding is refused rather than skipped' });
add('te with param', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n`);
add('te in 1.0', `POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
  { stricter: 'HTTP/1.0 has no Transfer-Encoding: a 1.0 hop would frame this body by the close' });
add('te trailing space', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked  \r\n\r\n0\r\n\r\n`);
add('te vertical tab', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n`);
add('cl twice same', `POST / HTTP/1.1\r\n${H}Content-Length: 2\r\nContent-Length: 2\r\n\r\nok`);
add('cl twice different', `POST / HTTP/1.1\r\n${H}Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!`);
add('cl list', `POST / HTTP/1.1\r\n${H}Content-Length: 2, 2\r\n\r\nok`);
add('cl plus', clPost('+2', 'ok'));
add('cl minus', clPost('-1', ''));
add('cl hex', clPost('0x2', 'ok'));
add('cl space inside', clPost('1 2', 'ok'));
add('cl trailing ows', `POST / HTTP/1.1\r\n${H}Content-Length: 2 \r\n\r\nok`);
add('cl empty', `POST / HTTP/1.1\r\n${H}Content-Length:\r\n\r\n`);
add('cl letters', clPost('abc', ''));
add('cl huge', clPost('99999999999999999999999', ''));
add('cl over body limit', clPost('2000000', ''), { stricter: 'over our body limit (1 MiB here): 413' });
add('get with cl body', `GET / HTTP/1.1\r\n${H}Content-Length: 3\r\n\r\nabc`);

// 7. chunk sizes
const badSizes = ['+5', ' 5', '0x5', '5 ', '5\t', '-5', 'g', '', '5g', '05x', '00000000000000005', '1ffffffffffffffff'];
for (const s of badSizes) {
  add(`chunk size ${JSON.stringify(s)}`, chunkedPost(`${s}\r\nhello\r\n0\r\n\r\n`), s === '00000000000000005'
    ? { stricter: 'chunk sizes are 1-16 hex digits, even with leading zeros: parsers disagree past 64 bits' } : {});
}
add('chunk size overflow 16 digits f', chunkedPost('ffffffffffffffff\r\nhello\r\n0\r\n\r\n'),
  { stricter: 'over our body limit (1 MiB here): 413' });
add('chunk size line bare lf', chunkedPost('5\nhello\r\n0\r\n\r\n'));
add('chunk data bare lf', chunkedPost('5\r\nhello\n0\r\n\r\n'));
add('chunk data no crlf', chunkedPost('5\r\nhello0\r\n\r\n'));
add('chunk data too long', chunkedPost('5\r\nhello!\r\n0\r\n\r\n'));
add('chunk data bare cr', chunkedPost('5\r\nhello\r0\r\n\r\n'));
add('last chunk bare lf', chunkedPost('5\r\nhello\r\n0\n\r\n'));
add('final crlf bare lf', chunkedPost('5\r\nhello\r\n0\r\n\n'));
add('last chunk 000', chunkedPost('5\r\nhello\r\n000\r\n\r\n'));
add('chunked then get', `${chunkedPost('1\r\na\r\n0\r\n\r\n')}${GET()}`);

// 8. chunk extensions
const exts = [';a', ';a=b', ';a=b;c=d', ';a="q"', ';a="q\\"x"', ';a=""', ';a="x y"', '; a=b', ';a =b', ';a= b',
  ';=b', ';a=', ';;', ';', ';a=b c', ';a="unterminated', ';a="x"y', ';a=\x01', ';a="\x01"', ';a=b;', ';!#$=%&',
  ';a="\xe9"', ';a=\xe9'];
const extStricter = { ';=b': 'an extension name is a token of at least one byte', ';a=': 'an "=" must be followed by a value' };
for (const e of exts) {
  add(`chunk ext ${JSON.stringify(e)}`, chunkedPost(`5${e}\r\nhello\r\n0\r\n\r\n`),
    extStricter[e] ? { stricter: `chunk-ext grammar (RFC 9112 7.1.1): ${extStricter[e]}` } : {});
}
add('chunk ext on last chunk', chunkedPost('5\r\nhello\r\n0;x=y\r\n\r\n'));
add('chunk ext long (3000)', chunkedPost(`5;a=${'b'.repeat(3000)}\r\nhello\r\n0\r\n\r\n`));
add('chunk ext too long (5000)', chunkedPost(`5;a=${'b'.repeat(5000)}\r\nhello\r\n0\r\n\r\n`),
  { stricter: 'a chunk line (size and extensions) is bounded at 4 KiB; llhttp allows 16 KiB' });

// 9. trailers
add('trailer', chunkedPost('5\r\nhello\r\n0\r\nX-T: v\r\n\r\n'));
add('two trailers', chunkedPost('5\r\nhello\r\n0\r\nX-T: v\r\nX-U: w\r\n\r\n'));
add('trailer obs-fold', chunkedPost('5\r\nhello\r\n0\r\nX-T: v\r\n w\r\n\r\n'));
add('trailer ctl', chunkedPost('5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n'));
add('trailer no colon', chunkedPost('5\r\nhello\r\n0\r\nX-T v\r\n\r\n'));
add('trailer bare lf', chunkedPost('5\r\nhello\r\n0\r\nX-T: v\n\r\n'));
add('trailer space before colon', chunkedPost('5\r\nhello\r\n0\r\nX-T : v\r\n\r\n'));
add('trailer nul', chunkedPost('5\r\nhello\r\n0\r\nX-T: \0\r\n\r\n'));

// 10. versions
for (const v of ['HTTP/1.2', 'HTTP/2.0', 'HTTP/0.9', 'http/1.1', 'HTTP/1.10', 'HTTP/1', 'HTTP/11', 'HTTP/1.1 ', 'HTTPS/1.1', 'HTTP/3.0', 'HTTP/1.x']) {
  add(`version ${JSON.stringify(v)}`, `GET / ${v}\r\n${H}\r\n`, v === 'HTTP/2.0' || v === 'HTTP/0.9'
    ? { stricter: 'only HTTP/1.0 and HTTP/1.1 are spoken here (505); llhttp lets the application decide' } : {});
}
add('no version', `GET /\r\n${H}\r\n`, { stricter: 'HTTP/0.9 simple requests are not served' });

// 11. methods and targets
add('lowercase method', `get / HTTP/1.1\r\n${H}\r\n`);
add('unknown method', `FOO / HTTP/1.1\r\n${H}\r\n`);
add('method with paren', `GE(T / HTTP/1.1\r\n${H}\r\n`);
add('empty method', ` / HTTP/1.1\r\n${H}\r\n`);
add('two spaces after method', `GET  / HTTP/1.1\r\n${H}\r\n`,
  { stricter: 'RFC 9112 3: exactly one SP between the parts of the request line' });
add('two spaces before version', `GET /  HTTP/1.1\r\n${H}\r\n`,
  { stricter: 'RFC 9112 3: exactly one SP between the parts of the request line' });
add('tab separator', `GET\t/ HTTP/1.1\r\n${H}\r\n`);
add('target asterisk', `OPTIONS * HTTP/1.1\r\n${H}\r\n`,
  { stricter: 'we are an origin server with nothing to say to OPTIONS *' });
add('target absolute-form', `GET http://example.com/x HTTP/1.1\r\n${H}\r\n`,
  { stricter: 'absolute-form is for proxies; its authority could disagree with Host' });
add('target no slash', `GET x HTTP/1.1\r\n${H}\r\n`, { stricter: 'not origin-form: no path to route' });
add('target non-ascii', `GET /caf\xe9 HTTP/1.1\r\n${H}\r\n`);
add('target hash', `GET /a#b HTTP/1.1\r\n${H}\r\n`);
add('target quote', `GET /a"b HTTP/1.1\r\n${H}\r\n`);
add('target percent', `GET /a%00b HTTP/1.1\r\n${H}\r\n`);
add('target backslash', `GET /a\\b HTTP/1.1\r\n${H}\r\n`);
add('target braces', `GET /a{b}|c^ HTTP/1.1\r\n${H}\r\n`);
add('target empty query', `GET /a? HTTP/1.1\r\n${H}\r\n`);
add('empty request line', `\r\n\r\n`);
add('only method', `GET\r\n${H}\r\n`);

// 12. pipelined pairs
add('pipelined two gets', `${GET()}${GET()}`);
add('pipelined get then bad', `${GET()}GET / HTTP/1.1\r\nX: a\0b\r\n${H}\r\n`);
add('pipelined cl then get', `${clPost(2, 'ok')}${GET()}`);
add('pipelined close then get', `${GET('Connection: close\r\n')}${GET()}`);
add('pipelined three', `${GET()}${clPost(3, 'abc')}${chunkedPost('1\r\nz\r\n0\r\n\r\n')}`);
add('pipelined cl short then get', `${clPost(10, 'ok')}${GET()}`);
add('pipelined 1.0 then get', `GET / HTTP/1.0\r\n\r\n${GET()}`);
add('pipelined 1.0 keep-alive then get', `GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n${GET()}`);
add('smuggle te.cl', `POST / HTTP/1.1\r\n${H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n`);
add('smuggle bad chunk then get', `${chunkedPost('2 ;x\r\nab\r\n0\r\n\r\n')}${GET()}`);

// 13. header counts and sizes
add('90 headers', `GET / HTTP/1.1\r\n${H}${Array.from({ length: 90 }, (_, i) => `X-${i}: v\r\n`).join('')}\r\n`);
add('long header value 8k', `GET / HTTP/1.1\r\n${H}X-Long: ${'v'.repeat(8000)}\r\n\r\n`);

// ---- our side ------------------------------------------------------------

// All cases through one http1_dump process: "<length>\n<bytes>" each.
function oursAll(cases) {
  const input = Buffer.concat(cases.flatMap((c) => [Buffer.from(`${c.bytes.length}\n`), c.bytes]));
  const r = spawnSync(DUMP, ['--batch'], { input, encoding: 'latin1', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`http1_dump exited ${r.status}: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, cases.length, 'http1_dump answered every case');
  return lines.map(oursOne);
}

function oursOne(line) {
  const o = JSON.parse(line);
  return {
    verdict: o.result === 'reject' ? 'reject' : 'accept',
    status: o.status,
    why: o.why,
    requests: o.requests.map((q) => ({
      method: q.method,
      url: q.query === undefined ? q.path : `${q.path}?${q.query}`,
      version: `1.${q.minor}`,
      headers: q.headers.flat(),
      body: q.body,
    })),
  };
}

// ---- Node's side ---------------------------------------------------------

// One server for the whole corpus; each case has its own connection, and the
// server reports per socket what it parsed and whether it refused.
function startNode() {
  const seen = new Map(); // client local port -> {requests, error}
  const entry = (sock) => {
    const k = sock.remotePort;
    if (!seen.has(k)) seen.set(k, { requests: [], error: null });
    return seen.get(k);
  };
  const server = http.createServer((req, res) => {
    const e = entry(req.socket);
    const rec = { method: req.method, url: req.url, version: req.httpVersion, headers: req.rawHeaders, body: '', done: false };
    e.requests.push(rec);
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => {
      rec.body = Buffer.concat(parts).toString('hex');
      rec.done = true;
      res.end('ok');
    });
  });
  server.on('clientError', (err, sock) => {
    entry(sock).error = err.code || 'error';
    sock.destroy();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, seen })));
}

// Feed one case to Node and wait for its outcome. `hint` is our own reading:
// when we accepted N requests, Node is done once it has N complete requests
// (then a short grace for a later error); when we refused, once it refuses or
// closes. Anything else runs to the time limit, so a disagreement is slow but
// never hidden, and a loaded machine cannot make Node look like it disagrees.
function nodeCase(node, bytes, hint) {
  return new Promise((resolve) => {
    const sock = net.connect(node.server.address().port, '127.0.0.1');
    let got = '';
    let port = 0;
    let closed = false;
    let graceAt = 0;
    const finish = () => {
      clearInterval(poll);
      clearTimeout(timer);
      sock.destroy();
      const e = node.seen.get(port) || { requests: [], error: null };
      node.seen.delete(port); // the port may serve a later case
      // Bytes after a request that closes the connection: llhttp calls that
      // an error, we stop reading. Either way that request alone is answered.
      if (e.error === 'HPE_CLOSED_CONNECTION') e.error = null;
      const requests = e.requests.filter((q) => q.done).map(({ done, ...q }) => q);
      // Node's Host check runs in JS: it answers 400 without a parse error.
      const hostRefusal = /^HTTP\/1\.1 400/m.test(got) && !e.error;
      resolve({ verdict: e.error || hostRefusal ? 'reject' : 'accept', error: e.error || (hostRefusal ? '400' : null), requests });
    };
    const timer = setTimeout(finish, 3000);
    const poll = setInterval(() => {
      if (!port) return;
      const e = node.seen.get(port);
      if (closed || e?.error) return finish();
      if (hint.verdict === 'accept' && (e?.requests.filter((q) => q.done).length || 0) >= hint.requests.length) {
        if (!graceAt) graceAt = Date.now();
        else if (Date.now() - graceAt >= 50) finish();
      }
    }, 10);
    sock.on('connect', () => {
      port = sock.localPort;
      sock.write(bytes);
    });
    sock.on('data', (d) => (got += d.toString('latin1')));
    sock.on('close', () => (closed = true));
    sock.on('error', () => {});
  });
}

// ---- the comparison ------------------------------------------------------

test('http1 parser agrees with llhttp on the corpus', async () => {
  assert.ok(existsSync(DUMP), `${DUMP} does not exist: build the http1_dump target (or set CASCADE_BUILD_DIR)`);
  assert.ok(CASES.length >= 300, `corpus has ${CASES.length} cases; want at least 300`);
  const node = await startNode();
  const results = [];
  try {
    // A few cases at a time: each waits for Node to answer or go quiet.
    const mine = oursAll(CASES);
    for (let i = 0; i < CASES.length; i += 50) {
      const batch = CASES.slice(i, i + 50);
      // Cases where we are stricter on purpose are not compared: no need to wait on Node.
      const theirs = await Promise.all(batch.map((c, k) => (c.stricter ? null : nodeCase(node, c.bytes, mine[i + k]))));
      batch.forEach((c, k) => results.push({ c, mine: mine[i + k], theirs: theirs[k] }));
    }
  } finally {
    node.server.close();
    node.server.closeAllConnections?.();
  }
  const problems = [];
  let stricter = 0;
  for (const { c, mine, theirs } of results) {
    if (c.stricter) {
      stricter++;
      if (mine.verdict !== 'reject') problems.push(`${c.name}: listed as stricter on purpose, but we accepted it`);
      continue;
    }
    if (mine.verdict !== theirs.verdict) {
      problems.push(`${c.name}: we ${mine.verdict} (${mine.status} ${mine.why || ''}), llhttp ${theirs.verdict} ` +
        `(${theirs.error || ''}); bytes ${JSON.stringify(c.bytes.toString('latin1'))}`);
      continue;
    }
    // Requests parsed before any refusal must be the same on both sides.
    const a = JSON.stringify(mine.requests);
    const b = JSON.stringify(theirs.requests);
    if (a !== b) problems.push(`${c.name}: parsed differently\n  ours:  ${a}\n  llhttp: ${b}`);
  }
  const accepted = results.filter((r) => r.mine.verdict === 'accept').length;
  process.stdout.write(`# ${results.length} cases: ${accepted} accepted, ${results.length - accepted} refused ` +
    `by us, ${stricter} stricter on purpose, ${problems.length} disagreements\n`);
  assert.deepEqual(problems, []);
});
