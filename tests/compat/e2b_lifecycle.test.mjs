// The real e2b SDK (2.51) in non-debug mode: the sandbox's life through the control plane,
// getHost through kbridge's port proxy, two sandboxes kept apart, and tokens refused.
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY come from the environment.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Sandbox } from 'e2b';

const api = new URL(process.env.E2B_API_URL);

// GET through kbridge's port: the host name getHost gives goes in the Host header.
function get(host, path = '/', headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: api.hostname, port: api.port, path, headers: { Host: host, ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('create with metadata, envs, timeout; getInfo; list by metadata, paged', async () => {
  const tag = `t${Date.now()}`;
  const a = await Sandbox.create({ metadata: { tag, n: '1' }, envs: { WHO: 'a' }, timeoutMs: 60_000 });
  const b = await Sandbox.create({ metadata: { tag, n: '2' }, timeoutMs: 60_000 });
  try {
    const info = await a.getInfo();
    assert.equal(info.sandboxId, a.sandboxId);
    assert.deepEqual(info.metadata, { tag, n: '1' });
    assert.ok(info.endAt.getTime() - Date.now() < 61_000);
    assert.equal((await a.commands.run('echo $WHO')).stdout, 'a\n');
    const pages = Sandbox.list({ query: { metadata: { tag } }, limit: 1 });
    const seen = [];
    while (pages.hasNext) seen.push(...(await pages.nextItems()).map((s) => s.sandboxId));
    assert.deepEqual(seen.sort(), [a.sandboxId, b.sandboxId].sort());
    const one = await Sandbox.list({ query: { metadata: { tag, n: '2' } } }).nextItems();
    assert.deepEqual(one.map((s) => s.sandboxId), [b.sandboxId]);
  } finally {
    await a.kill();
    await b.kill();
  }
});

test('a short setTimeout ends the sandbox and what runs in it', async () => {
  const sbx = await Sandbox.create();
  await sbx.commands.run('sleep 600', { background: true });
  await sbx.setTimeout(1_500);
  const t0 = Date.now();
  while (await sbx.isRunning()) {
    assert.ok(Date.now() - t0 < 15_000, 'still running 15 s after a 1.5 s timeout');
    await new Promise((r) => setTimeout(r, 200));
  }
  await assert.rejects(sbx.commands.run('true'));
  assert.equal(await Sandbox.kill(sbx.sandboxId), false);
});

test('pause, then connect resumes: files and processes are still there', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 60_000 });
  try {
    await sbx.files.write('/home/user/kept.txt', 'kept');
    assert.equal(await sbx.betaPause(), true);
    assert.equal((await sbx.getInfo()).state, 'paused');
    const back = await Sandbox.connect(sbx.sandboxId);
    assert.equal((await back.getInfo()).state, 'running');
    assert.equal(await back.files.read('/home/user/kept.txt'), 'kept');
  } finally {
    assert.equal(await Sandbox.kill(sbx.sandboxId), true);
  }
});

test('getHost: a server started with commands.run, reached through kbridge', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 60_000 });
  try {
    await sbx.files.write('/home/user/www/index.html', 'served from the sandbox');
    await sbx.commands.run('cd /home/user/www && python3 -m http.server 3000', { background: true });
    const host = sbx.getHost(3000);
    assert.match(host, new RegExp(`^3000-${sbx.sandboxId}\\.`));
    // Ports are authenticated: the sandbox's traffic token, in E2B's header.
    const auth = { 'E2B-Traffic-Access-Token': sbx.trafficAccessToken };
    assert.ok(sbx.trafficAccessToken);
    let r;
    for (let i = 0; i < 100; i++) {
      r = await get(host, '/index.html', auth);
      if (r.status === 200) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(r.status, 200);
    assert.equal(r.body, 'served from the sandbox');
    assert.equal((await get(host, '/index.html')).status, 403, 'no token');
  } finally {
    await sbx.kill();
  }
});

test('two sandboxes are kept apart; a wrong or a foreign token is refused', async () => {
  const a = await Sandbox.create({ timeoutMs: 60_000 });
  const b = await Sandbox.create({ timeoutMs: 60_000 });
  try {
    await a.files.write('/home/user/secret.txt', 'A only');
    assert.equal(await b.files.exists('/home/user/secret.txt'), false);
    const ps = (await b.commands.run('ps -eo args')).stdout;
    assert.ok(!ps.includes('secret'), ps);
    // b's own envd token on a's files: refused.
    const foreign = await fetch(`${process.env.E2B_SANDBOX_URL}/files?path=/home/user/secret.txt`, {
      headers: { 'E2b-Sandbox-Id': a.sandboxId, 'E2b-Sandbox-Port': '49983', 'X-Access-Token': b.envdAccessToken },
    });
    assert.equal(foreign.status, 401);
    await assert.rejects(Sandbox.create({ apiKey: 'not-the-key' }));
    await assert.rejects(Sandbox.list({ apiKey: 'not-the-key' }).nextItems());
  } finally {
    await a.kill();
    await b.kill();
  }
});
