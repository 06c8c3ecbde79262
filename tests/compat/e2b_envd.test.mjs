// The real E2B SDKs (e2b and @e2b/code-interpreter, pinned in package.json) in non-debug
// mode against kbridge as a self-hosted E2B: Sandbox.create through the control plane,
// files through envd, runCode through the sandbox's code interpreter, each routed by the
// SDK's E2b-Sandbox-Id header. E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY come from the
// environment (all three kbridge's URL and token).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox as BaseSandbox, FileNotFoundError, CommandExitError } from 'e2b';
import { Sandbox } from '@e2b/code-interpreter';

test('files.write / read / multi-file write, and runCode sees them', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    const info = await sbx.files.write('/home/user/a.txt', 'hello é');
    assert.equal(info.path, '/home/user/a.txt');
    assert.equal(info.name, 'a.txt');
    assert.equal(await sbx.files.read('/home/user/a.txt'), 'hello é');
    const bytes = new Uint8Array(200_000).map((_, i) => (i * 7) & 255);
    await sbx.files.write('data/bin.dat', bytes.buffer);  // relative: from the home
    const back = await sbx.files.read('/home/user/data/bin.dat', { format: 'bytes' });
    assert.deepEqual(Buffer.from(back), Buffer.from(bytes));
    const many = await sbx.files.write([
      { path: '/home/user/m1.txt', data: 'one' },
      { path: '/home/user/dir/q"uo\nte é.txt', data: 'two' },
    ]);
    assert.deepEqual(many.map((e) => e.path), ['/home/user/m1.txt', '/home/user/dir/q"uo\nte é.txt']);
    assert.equal(await sbx.files.read('/home/user/dir/q"uo\nte é.txt'), 'two');
    await assert.rejects(sbx.files.read('/home/user/nope.txt'), FileNotFoundError);
    const ex = await sbx.runCode("open('/home/user/m1.txt').read()");
    assert.equal(ex.text, 'one');
    assert.equal(await sbx.isRunning(), true);
  } finally {
    await sbx.kill();
  }
  assert.equal(await sbx.isRunning(), false);
});

test('files.list / exists / getInfo / makeDir / rename / remove (Connect RPC, JSON)', async () => {
  const sbx = await BaseSandbox.create();
  try {
    await sbx.files.write([{ path: '/home/user/t/a.txt', data: 'aaa' },
                           { path: '/home/user/t/sub/b.txt', data: 'b' }]);
    const top = await sbx.files.list('/home/user/t');
    assert.deepEqual(top.map((e) => [e.name, e.type]).sort(), [['a.txt', 'file'], ['sub', 'dir']]);
    const a = top.find((e) => e.name === 'a.txt');
    assert.equal(a.path, '/home/user/t/a.txt');
    assert.equal(a.size, 3);
    assert.equal(a.owner, 'user');
    assert.ok(a.modifiedTime instanceof Date && !isNaN(a.modifiedTime));
    const deep = await sbx.files.list('/home/user/t', { depth: 2 });
    assert.ok(deep.some((e) => e.path === '/home/user/t/sub/b.txt'));
    assert.equal(await sbx.files.exists('/home/user/t/a.txt'), true);
    assert.equal(await sbx.files.exists('/home/user/t/nope'), false);
    assert.equal((await sbx.files.getInfo('/home/user/t/sub')).type, 'dir');
    assert.equal(await sbx.files.makeDir('/home/user/t/new/deeper'), true);
    assert.equal(await sbx.files.makeDir('/home/user/t/new/deeper'), false);
    const moved = await sbx.files.rename('/home/user/t/a.txt', '/home/user/t/new/a2.txt');
    assert.equal(moved.path, '/home/user/t/new/a2.txt');
    assert.equal(await sbx.files.read('/home/user/t/new/a2.txt'), 'aaa');
    await sbx.files.remove('/home/user/t/sub');
    assert.equal(await sbx.files.exists('/home/user/t/sub/b.txt'), false);
    await assert.rejects(sbx.files.list('/home/user/none'), FileNotFoundError);
    await assert.rejects(sbx.files.remove('/home/user/none'), FileNotFoundError);
    // as root
    await sbx.files.write('/root/r.txt', 'r', { user: 'root' });
    assert.equal((await sbx.files.getInfo('/root/r.txt', { user: 'root' })).owner, 'root');
  } finally {
    await sbx.kill();
  }
});

test('uploadUrl / downloadUrl: signed, no sandbox id', async () => {
  const sbx = await BaseSandbox.create();
  const other = await BaseSandbox.create();
  try {
    const up = await sbx.uploadUrl('/home/user/signed.txt');
    assert.ok(!up.includes(sbx.sandboxId) && up.includes('signature=v1_'));
    const form = new FormData();
    form.append('file', new Blob(['via a signed url']), '/home/user/signed.txt');
    const res = await fetch(up, { method: 'POST', body: form });
    assert.equal(res.status, 200, await res.clone().text());
    const down = await sbx.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: 60 });
    assert.equal(await (await fetch(down)).text(), 'via a signed url');
    assert.equal(await other.files.exists('/home/user/signed.txt'), false);
    // a URL signed for reading does not write; a tampered one does nothing
    assert.equal((await fetch(down, { method: 'POST', body: form })).status, 401);
    assert.equal((await fetch(down.replace('signed.txt', 'other.txt'))).status, 401);
  } finally {
    await sbx.kill();
    await other.kill();
  }
});

test('files.watchDir: recursive events, start first, stop', async () => {
  const sbx = await BaseSandbox.create();
  try {
    await sbx.files.makeDir('/home/user/w/sub');
    const seen = [];
    const handle = await sbx.files.watchDir('/home/user/w', (ev) => seen.push(`${ev.type}:${ev.name}`),
                                            { recursive: true, timeoutMs: 30_000 });
    await sbx.files.write('/home/user/w/sub/f.txt', 'x');
    await sbx.files.write('/home/user/w/top.txt', 'y');
    await sbx.files.remove('/home/user/w/top.txt');
    for (let i = 0; i < 100 && !seen.includes('remove:top.txt'); i++) await new Promise((r) => setTimeout(r, 50));
    await handle.stop();
    assert.ok(seen.some((e) => e.endsWith(':sub/f.txt')), seen.join(','));
    assert.ok(seen.includes('remove:top.txt'), seen.join(','));
    await assert.rejects(sbx.files.watchDir('/home/user/none', () => {}), FileNotFoundError);
  } finally {
    await sbx.kill();
  }
});

test('commands.run, background + stdin + kill, list, connect, pty', async () => {
  const sbx = await BaseSandbox.create({ envs: { SBX: 'sandbox-env' } });
  try {
    const out = [];
    const r = await sbx.commands.run('echo $FOO $SBX $USER; echo err >&2; pwd', {
      envs: { FOO: 'bar' }, cwd: '/tmp', onStdout: (d) => out.push(d) });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'bar sandbox-env user\n/tmp\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(out.join(''), r.stdout);
    assert.equal((await sbx.commands.run('id -un', { user: 'root' })).stdout, 'root\n');
    await assert.rejects(sbx.commands.run('exit 3'), (e) => e instanceof CommandExitError && e.exitCode === 3);
    const h = await sbx.commands.run('cat', { background: true, stdin: true });
    assert.ok(h.pid > 0);
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid && p.cmd === '/bin/bash'));
    await sbx.commands.sendStdin(h.pid, 'input-data\n');
    const seen = [];
    const again = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d) });
    await h.closeStdin();
    const done = await h.wait();
    assert.equal(done.stdout, 'input-data\n');
    await again.wait();
    const k = await sbx.commands.run('sleep 30', { background: true });
    assert.equal(await sbx.commands.kill(k.pid), true);
    await assert.rejects(k.wait(), (e) => e instanceof CommandExitError && /killed/.test(e.message));
    assert.equal(await sbx.commands.kill(999999), false);
    const bytes = [];
    const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => bytes.push(...d) });
    await sbx.pty.resize(t.pid, { cols: 100, rows: 30 });
    await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size; exit\n'));
    await t.wait().catch(() => {});
    assert.match(Buffer.from(bytes).toString(), /30 100/);
  } finally {
    await sbx.kill();
  }
});

test('commands.run: the login shell (bash -l -c) gives the PATH, HOME and USER it always did', async () => {
  // kbridge rewrites the template's /etc/profile on first boot so that bash -l forks no
  // `id -u` (bash has $EUID); sh -l (no $EUID) still runs the original logic, so both
  // shells must agree, for both users.
  const sbx = await BaseSandbox.create();
  try {
    const show = 'echo "$PATH|$HOME|$USER|$LOGNAME"';
    const debian = (await sbx.commands.run('grep -c "id -u" /etc/profile || true')).stdout.trim() !== '0';
    for (const [user, home] of [['user', '/home/user'], ['root', '/root']]) {
      const bash = (await sbx.commands.run(show, { user })).stdout;
      const sh = (await sbx.commands.run(`exec sh -l -c '${show}'`, { user })).stdout;
      assert.equal(bash, sh, `${user}: bash -l and sh -l differ`);
      const [path, h, u, logname] = bash.trim().split('|');
      assert.equal(h, home);
      assert.equal(u, user);
      assert.equal(logname, user);
      assert.match(path, /(^|:)\/usr\/bin(:|$)/);
      if (debian) assert.equal(/(^|:)\/usr\/sbin(:|$)/.test(path), user === 'root', `${user}: ${path}`);
    }
    // and it is still a login shell
    const r = await sbx.commands.run('shopt -q login_shell && echo login');
    assert.equal(r.stdout, 'login\n');
  } finally {
    await sbx.kill();
  }
});

test('two sandboxes do not see each other, and a foreign token is refused', async () => {
  const a = await BaseSandbox.create();
  const b = await BaseSandbox.create();
  try {
    await a.files.write('/home/user/only-a.txt', 'a');
    await assert.rejects(b.files.read('/home/user/only-a.txt'), FileNotFoundError);
    // b's envd with a's token: refused.
    const res = await fetch(`${process.env.E2B_SANDBOX_URL}/files?path=%2Fetc%2Fhostname`, {
      headers: { 'E2b-Sandbox-Id': b.sandboxId, 'E2b-Sandbox-Port': '49983',
                 'X-Access-Token': a.envdAccessToken },
    });
    assert.equal(res.status, 401);
  } finally {
    await a.kill();
    await b.kill();
  }
});
