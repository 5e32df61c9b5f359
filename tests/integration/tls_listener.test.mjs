// tls_listener.test.mjs: cascaded serving HTTPS itself (`tls: {cert_file,
// key_file}`, issue 15), for one-box and systemd setups with no ingress in
// front. common/httpd.c wraps each accepted connection in libevent's OpenSSL
// bufferevent; this file checks, with real clients, what a user would notice:
//   - the official openai SDK and curl talk to it with a private CA trusted,
//     streamed and not, and HTTP/1.1 is what ALPN settles on;
//   - an answer that ends with the connection (HTTP/1.0) ends with TLS's
//     close_notify, so a client can tell it from a cut;
//   - a client that does not trust the CA (or asks for another name) is refused;
//   - plain HTTP sent to the TLS port is closed and harms nothing;
//   - a client that never finishes its handshake is cut by header_timeout_ms;
//   - the server's limits hold over TLS as over TCP: pipelining (many
//     requests in one TLS record, more than max_pipelined), the body read
//     timeout, the header size limit, max_connections_per_worker, and
//     backpressure on a streamed answer the client does not read;
//   - a key that does not match its certificate stops start-up, naming both.
// The CA and the server certificate (SAN localhost and 127.0.0.1) are made
// for each run with the openssl command-line tool.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { pathToFileURL } from 'node:url';

import {
  SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, rawHttp, runToEnd, sleep,
  startGateway, startPeer, tier, until,
} from '../support/harness.mjs';

cleanupAfterAll();

const MiB = 1 << 20;
// Under ASan freed memory sits in a quarantine and shows in RSS: keep it small.
const ENV = { ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=4'].filter(Boolean).join(':') };

function which(bin) {
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}
const OPENSSL = which('openssl');
const CURL = which('curl');
const PYTHON = which('python3');
const OPENAI = path.join(SOURCE_DIR, 'node_modules', 'openai', 'index.mjs');
// A test whose tool is missing is skipped, with the reason, never passed
// (tests/support/run-node-test.mjs turns a skip into SKIP, and into a
// failure under CI).
const NO_OPENSSL = OPENSSL ? false : 'the openssl command-line tool is not installed (Debian: openssl)';

// ---- certificates -------------------------------------------------------------

function openssl(args, cwd) {
  const r = spawnSync(OPENSSL, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed:\n${r.stderr}`);
}

// A throwaway CA, a server certificate it signed for localhost and
// 127.0.0.1, and an unrelated key (for the mismatch check).
function makeCerts() {
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-tls-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=Cascade test CA', '-keyout', 'ca.key',
    '-out', 'ca.pem', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  openssl(['req', '-new', ...ec, '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr'], dir);
  writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' +
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', '2',
    '-days', '2', '-extfile', 'ext.cnf', '-out', 'server.pem'], dir);
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'other.key'], dir);
  const p = (f) => path.join(dir, f);
  return { dir, ca: p('ca.pem'), cert: p('server.pem'), key: p('server.key'), otherKey: p('other.key') };
}

// ---- TLS clients --------------------------------------------------------------

// A TLS socket that trusts the test CA, with the same helpers as
// httpd_hardening's raw socket: data() so far, closed(), until(pred, ms).
function tlsSock(port, ca, { servername = 'localhost' } = {}) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ port, host: '127.0.0.1', servername, ca });
    const chunks = [];
    let nbytes = 0;
    let text = null;
    let closed = false;
    const waiters = [];
    const data = () => (text ??= Buffer.concat(chunks).toString('latin1'));
    const check = () => {
      for (const w of [...waiters]) {
        if (w.pred()) {
          waiters.splice(waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(data());
        }
      }
    };
    sock.on('data', (d) => {
      chunks.push(d);
      nbytes += d.length;
      text = null;
      check();
    });
    sock.on('close', () => {
      closed = true;
      check();
    });
    sock.on('error', () => {});
    const h = {
      sock,
      data,
      bytes: () => nbytes,
      closed: () => closed,
      until: (pred, ms = 5000, what = 'condition') =>
        new Promise((res, rej) => {
          if (pred()) return res(data());
          const w = { pred, resolve: res };
          w.timer = setTimeout(() => {
            waiters.splice(waiters.indexOf(w), 1);
            rej(new Error(`${what} not met in ${ms} ms; got ${JSON.stringify(data().slice(0, 300))} closed=${closed}`));
          }, ms);
          waiters.push(w);
        }),
    };
    sock.once('secureConnect', () => resolve(h));
    sock.once('error', reject);
  });
}

// One HTTPS request with node:https; resolves {status, headers, body, alpn}.
function httpsRequest(url, { ca, method = 'GET', headers = {}, body, ALPNProtocols } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, ca, ALPNProtocols, agent: false }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({
        status: res.statusCode, headers: res.headers, body: Buffer.concat(parts).toString('utf8'),
        alpn: res.socket.alpnProtocol,
      }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(10000, () => req.destroy(new Error('timed out')));
    if (body) req.write(body);
    req.end();
  });
}

const count = (s, re) => (s.match(re) || []).length;

// run: the harness's runToEnd, with a 30 s bound.
const run = (bin, args, { env = {}, timeoutMs = 30000 } = {}) => runToEnd(bin, args, { env, timeoutMs });

function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

// ---- the tests ------------------------------------------------------------------

describe('cascaded with tls', { skip: NO_OPENSSL }, () => {
  let certs;
  let peer;
  let gw;
  let base;     // https://localhost:PORT

  before(async () => {
    certs = makeCerts();
    peer = await startPeer({ name: 'tls-up' });
    // Room for the backpressure test's endless stream (the default caps an
    // answer at a few MiB, which would end it before it shows anything).
    const t = tier({ name: 'small', urls: peer.url, max_output_tokens: 1 << 24 });
    t.engine.max_response_bytes = 1 << 30;
    gw = await startGateway({
      config: makeConfig({
        tiers: [t],
        workers: 1,
        tls: { cert_file: certs.cert, key_file: certs.key },
        // A small header limit: httpd's bound on unread input is this size,
        // well under a TLS record (16 KiB), which is what the pipelining
        // test needs to catch a read stopped mid-record.
        limits: { header_timeout_ms: 800, read_timeout_ms: 800, max_pipelined: 4, max_header_bytes: 2048 },
      }),
      env: ENV,
    });
    base = `https://localhost:${gw.port}`;
  });
  after(() => certs && rmSync(certs.dir, { recursive: true, force: true }));

  test('the listener says it serves TLS', () => {
    const line = gw.logLines().find((l) => l.msg === 'listening');
    assert.equal(line?.tls, true, JSON.stringify(line));
  });

  test('the openai SDK, with the CA trusted, gets a completion and a stream over https', {
    skip: existsSync(OPENAI) ? false : `${OPENAI} missing: run npm ci`,
  }, async () => {
    // The SDK uses Node's fetch; NODE_EXTRA_CA_CERTS is how a user would
    // trust a private CA for it, and it is read only at start-up: a child.
    const script = path.join(certs.dir, 'sdk.mjs');
    writeFileSync(script, `
      import OpenAI from ${JSON.stringify(pathToFileURL(OPENAI).href)};
      const client = new OpenAI({ apiKey: ${JSON.stringify(TEST_KEY)}, baseURL: ${JSON.stringify(`${base}/v1`)},
                                  maxRetries: 0, timeout: 10000 });
      const c = await client.chat.completions.create({ model: 'small', messages: [{ role: 'user', content: 'hello over tls' }] });
      const stream = await client.chat.completions.create({ model: 'small', stream: true,
        messages: [{ role: 'user', content: 'stream over tls [[peer:chunks=20]]' }] });
      const parts = [];
      let finish = null;
      for await (const ch of stream) {
        parts.push(ch.choices[0]?.delta?.content ?? '');
        finish = ch.choices[0]?.finish_reason ?? finish;
      }
      console.log(JSON.stringify({ content: c.choices[0].message.content, finish: c.choices[0].finish_reason,
                                   chunks: parts.filter(Boolean).length, streamed: parts.join(''), streamFinish: finish }));
    `);
    const r = await run(process.execPath, [script], { env: { NODE_EXTRA_CA_CERTS: certs.ca } });
    assert.equal(r.code, 0, `the SDK script failed:\n${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1));
    assert.ok(out.content.length > 0, JSON.stringify(out));
    assert.equal(out.finish, 'stop');
    assert.equal(out.chunks, 20, JSON.stringify(out));
    assert.equal(out.streamFinish, 'stop');
  });

  test('curl --cacert gets a completion over https, on HTTP/1.1 although it offers h2', {
    skip: CURL ? false : 'curl is not installed',
  }, async () => {
    const r = await run(CURL, ['-sS', '--cacert', certs.ca, '-w', '\\n%{http_code} %{http_version}',
      '-H', 'content-type: application/json', '-H', `authorization: Bearer ${TEST_KEY}`,
      '-d', JSON.stringify(chatBody('hello curl', { model: 'small' })), `${base}/v1/chat/completions`]);
    assert.equal(r.code, 0, `curl failed: ${r.stderr}`);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.at(-1), '200 1.1');
    const body = JSON.parse(lines.slice(0, -1).join('\n'));
    assert.equal(body.object, 'chat.completion');
    assert.ok(body.choices[0].message.content.length > 0);
  });

  test('a streamed answer over TLS arrives chunk by chunk and ends', async () => {
    const res = await httpsRequest(`${base}/v1/chat/completions`, {
      ca: readFileSync(certs.ca), method: 'POST', headers: authHeaders(), ALPNProtocols: ['h2', 'http/1.1'],
      body: JSON.stringify(chatBody('stream me [[peer:chunks=50]]', { model: 'small', stream: true })),
    });
    assert.equal(res.status, 200);
    assert.equal(res.alpn, 'http/1.1');
    assert.match(res.headers['content-type'], /text\/event-stream/);
    assert.equal(count(res.body, /^data: \{/gm), 50 + 2, 'a role chunk, 50 content chunks and the final one');
    assert.match(res.body, /data: \[DONE\]\n\n$/);
  });

  test('an answer delimited by the close (HTTP/1.0, streamed) ends with close_notify', {
    skip: PYTHON ? false : 'python3 is not installed',
  }, async () => {
    // With no length and no chunks, only TLS's close_notify tells the end of
    // the body from a cut connection (a truncation attack looks the same).
    // Python's ssl module, told not to excuse a "ragged" EOF, says which it was.
    const script = `
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="localhost",
                    suppress_ragged_eofs=False)
body = sys.argv[3].encode()
s.sendall(b"POST /v1/chat/completions HTTP/1.0\\r\\nHost: a\\r\\nAuthorization: Bearer " + sys.argv[4].encode() +
          b"\\r\\nContent-Type: application/json\\r\\nContent-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
data = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    print("clean end" if data.endswith(b"data: [DONE]\\n\\n") else "bad body: %r" % data[-200:])
except ssl.SSLEOFError as e:
    print("no close_notify: %s (%d bytes read)" % (e, len(data)))
`;
    const body = JSON.stringify(chatBody('stream to the close [[peer:chunks=5]]', { model: 'small', stream: true }));
    const r = await run(PYTHON, ['-c', script, String(gw.port), certs.ca, body, TEST_KEY]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'clean end');
  });

  test('a client that does not trust the CA is refused, and the gateway serves on', async () => {
    await assert.rejects(httpsRequest(`${base}/healthz`, {}), (e) => /CERT|VERIFY|SELF_SIGNED/.test(e.code || ''));
    if (CURL) {
      const r = await run(CURL, ['-sS', `${base}/healthz`]);
      assert.equal(r.code, 60, `curl without the CA: exit ${r.code} (60: peer certificate cannot be authenticated)`);
    }
    // The wrong name is refused too: the certificate is for localhost and 127.0.0.1.
    await assert.rejects(tlsSock(gw.port, readFileSync(certs.ca), { servername: 'cascade.example' }),
      (e) => e.code === 'ERR_TLS_CERT_ALTNAME_INVALID');
    const ok = await httpsRequest(`${base}/healthz`, { ca: readFileSync(certs.ca) });
    assert.equal(ok.status, 200);
  });

  test('plain HTTP to the TLS port is closed without an answer; TLS requests still work', async () => {
    await sleep(1100); // past the handshake-failure log's once-a-second limit (the untrusted clients above)
    const r = await rawHttp(gw.port, 'GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n', { timeoutMs: 3000 });
    assert.equal(r.closed, true, 'the connection is closed');
    assert.doesNotMatch(r.data, /HTTP\/1\.1 200/);
    const post = await rawHttp(gw.port, `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}`,
      { timeoutMs: 3000 });
    assert.equal(post.closed, true);
    assert.equal(gw.proc.exitCode, null, 'cascaded still runs');
    const ok = await httpsRequest(`${base}/healthz`, { ca: readFileSync(certs.ca) });
    assert.equal(ok.status, 200);
    // Whoever debugs the client finds the reason in the log (at most once a second).
    await gw.waitForLog((l) => /tls handshake with 127\.0\.0\.1 failed: http request/.test(l.msg || ''));
  });

  test('a handshake that never completes is cut by header_timeout_ms, others are served meanwhile', async () => {
    const ca = readFileSync(certs.ca);
    // One client sends nothing after connecting; one sends the first bytes
    // of a TLS record header and stops.
    const silent = rawHttp(gw.port, null, { timeoutMs: 5000 });
    const partial = rawHttp(gw.port, Buffer.from([0x16, 0x03, 0x01]), { timeoutMs: 5000 });
    const t0 = Date.now();
    const ok = await httpsRequest(`${base}/healthz`, { ca });
    assert.equal(ok.status, 200);
    assert.ok(Date.now() - t0 < 700, 'a normal client is not held up');
    for (const r of [await silent, await partial]) {
      assert.equal(r.closed, true, 'the stalled handshake was cut');
      assert.ok(r.ms >= 600 && r.ms < 3000, `cut after ${r.ms} ms (header_timeout_ms 800)`);
    }
  });

  test('pipelining over TLS: 2000 requests in one write of whole TLS records, all answered in order', async () => {
    const c = await tlsSock(gw.port, readFileSync(certs.ca));
    // Alternate a 200 and a 404 so that the order of the answers shows.
    const reqs = [];
    for (let i = 0; i < 2000; i++) {
      reqs.push(i % 2 ? `GET /nope-${i} HTTP/1.1\r\nHost: a\r\n\r\n` : 'GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n');
    }
    // Pad the burst to whole 16 KiB records. A server that stops reading a
    // record half-way once 2 KiB of input wait (a read watermark on the TLS
    // bufferevent) leaves the record's decrypted rest inside OpenSSL, where
    // nothing reads it again until more bytes reach the socket: after the
    // last record none do, and the last answers never come (seen: 1982 of
    // 2009 answered).
    const len = (a) => a.reduce((n, r) => n + Buffer.byteLength(r), 0);
    const target = Math.ceil((len(reqs) + 200) / 16384) * 16384;
    while (len(reqs) < target) {
      const pad = Math.min(target - len(reqs), 1500); // under max_header_bytes
      const bare = Buffer.byteLength('GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n');
      const k = target - len(reqs) - pad < bare ? target - len(reqs) - bare : pad - bare;
      reqs.push(`GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: ${'p'.repeat(k)}\r\n\r\n`);
    }
    assert.equal(len(reqs) % 16384, 0);
    // Count status lines as they come (answers follow each other with no
    // newline between a body and the next status line). The 12 bytes carried
    // over complete a status line cut between two chunks, and cannot hold a
    // whole one (13 bytes), so none is counted twice.
    const statuses = [];
    let carry = '';
    c.sock.on('data', (d) => {
      const text = carry + d.toString('latin1');
      for (const m of text.matchAll(/HTTP\/1\.1 (\d{3}) /g)) statuses.push(Number(m[1]));
      carry = text.slice(-12);
    });
    c.sock.write(reqs.join(''));
    await until(() => statuses.length >= reqs.length || c.closed(), 10000, `${reqs.length} answers`);
    assert.deepEqual(statuses, reqs.map((r) => (r.startsWith('GET /nope') ? 404 : 200)));
    c.sock.destroy();
  });

  test('limits hold over TLS: a slow body gets 408, an oversized head 431', async () => {
    const ca = readFileSync(certs.ca);
    const slow = await tlsSock(gw.port, ca);
    slow.sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":');
    const t0 = Date.now();
    await slow.until(() => slow.closed(), 5000, 'the slow body is cut');
    assert.match(slow.data(), /^HTTP\/1\.1 408 /);
    assert.ok(Date.now() - t0 >= 600, `cut after ${Date.now() - t0} ms (read_timeout_ms 800)`);
    const big = await tlsSock(gw.port, ca);
    big.sock.write(`GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(4000)}\r\n\r\n`);
    await big.until(() => big.closed(), 5000, 'the oversized head is refused');
    assert.match(big.data(), /^HTTP\/1\.1 431 /);
  });

  test('a streamed answer the client does not read is held back (backpressure), and resumes', async (t) => {
    await peer.reset();
    const c = await tlsSock(gw.port, readFileSync(certs.ca));
    const payload = JSON.stringify(chatBody('flood [[peer:endless]] [[peer:piece_bytes=8000]]', {
      model: 'small', stream: true, max_tokens: 10000000,
    }));
    const rss0 = rssBytes(gw.proc.pid);
    c.sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
    await c.until(() => /^HTTP\/1\.1 200/.test(c.data()), 5000, 'the stream starts');
    c.sock.pause(); // from here on the client reads nothing
    await sleep(2000);
    const sent = (await peer.stats()).bytes_sent;
    const grown = rssBytes(gw.proc.pid) - rss0;
    t.diagnostic(`client paused: the peer sent ${(sent / MiB).toFixed(1)} MiB; cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    // Without backpressure the peer pushes tens of MB a second; with it only
    // socket buffers fill (plain TCP's test allows the same bounds).
    assert.ok(sent < 32 * MiB, `the peer sent ${(sent / MiB).toFixed(1)} MiB to a client that reads nothing`);
    assert.ok(grown < 16 * MiB, `cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    // Reading again drains the paused stream: httpd's drain callback fires
    // from the TLS bufferevent's write callback.
    const have = c.bytes();
    const t0 = Date.now();
    c.sock.resume();
    await until(() => c.bytes() - have > 16 * MiB, 20000, 'the stream resumes: 16 MiB more arrive');
    t.diagnostic(`client reading again: 16 MiB more arrived in ${Date.now() - t0} ms`);
    assert.ok((await peer.stats()).bytes_sent > sent + 8 * MiB, 'the upstream went on once the client read');
    c.sock.destroy();
    await until(async () => (await peer.stats()).aborted === 1, 5000, 'the upstream is cancelled when the client leaves');
  });
});

describe('tls: a connection limit and bad files at start-up', { skip: NO_OPENSSL }, () => {
  let certs;
  let peer;
  before(async () => {
    certs = makeCerts();
    peer = await startPeer({ name: 'tls-cfg' });
  });
  after(() => certs && rmSync(certs.dir, { recursive: true, force: true }));

  async function startError(tlsConf) {
    try {
      const gw = await startGateway({ config: makeConfig({ upstream: peer.url, tls: tlsConf }), timeoutMs: 5000 });
      await gw.stop();
    } catch (e) {
      return e.message;
    }
    assert.fail('cascaded started');
  }

  test('max_connections_per_worker holds over TLS', async () => {
    // Its own gateway: the suite above cuts idle connections after 800 ms,
    // sooner than a loaded machine may open them all.
    const gw = await startGateway({
      config: makeConfig({
        upstream: peer.url, workers: 1, tls: { cert_file: certs.cert, key_file: certs.key },
        limits: { max_connections_per_worker: 20 },
      }),
    });
    const ca = readFileSync(certs.ca);
    const held = [];
    for (let i = 0; i < 20; i++) held.push(await tlsSock(gw.port, ca));
    // The 21st is closed at once: its handshake fails.
    await assert.rejects(tlsSock(gw.port, ca), (e) => /ECONNRESET|socket disconnected|EPIPE/.test(`${e.code} ${e.message}`));
    held.pop().sock.destroy();
    await until(async () => {
      try {
        held.push(await tlsSock(gw.port, ca));
        return true;
      } catch {
        return false;
      }
    }, 3000, 'a freed slot is usable again');
    for (const h of held) h.sock.destroy();
    await gw.stop();
  });

  test('a key that does not match its certificate stops start-up, naming the files', async () => {
    const msg = await startError({ cert_file: certs.cert, key_file: certs.otherKey });
    assert.match(msg, /tls: .*(other\.key.*(mismatch|does not match)|does not match.*server\.pem)/);
  });

  test('a missing certificate file stops start-up, naming it', async () => {
    const missing = path.join(certs.dir, 'nope.pem');
    const msg = await startError({ cert_file: missing, key_file: certs.key });
    assert.match(msg, new RegExp(`tls: certificate chain ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: No such file`));
  });

  test('a file that is not PEM stops start-up, naming it', async () => {
    const msg = await startError({ cert_file: certs.key, key_file: certs.key });
    assert.match(msg, /tls: cannot load the certificate chain .*server\.key/);
  });
});
