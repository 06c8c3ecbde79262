// An older e2b SDK (2.50, pinned in package.json as e2b-250) in non-debug mode: the
// control plane without the /v2 prefix where 2.48-2.50 use it, and envd through the same
// routing. E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY come from the environment.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b-250';

test('e2b 2.50: create, getInfo, list, setTimeout, files, commands, connect, kill', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: 'old-paths' }, envs: { OLD: 'yes' }, timeoutMs: 60_000 });
  try {
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.deepEqual(info.metadata, { suite: 'old-paths' });
    const paginator = Sandbox.list({ query: { metadata: { suite: 'old-paths' } } });
    const listed = await paginator.nextItems();
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId]);
    await sbx.setTimeout(120_000);
    assert.ok((await sbx.getInfo()).endAt.getTime() > Date.now() + 100_000);
    await sbx.files.write('/home/user/old.txt', 'from 2.50');
    assert.equal(await sbx.files.read('/home/user/old.txt'), 'from 2.50');
    const r = await sbx.commands.run('echo $OLD; cat /home/user/old.txt');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'yes\nfrom 2.50');
    const again = await Sandbox.connect(sbx.sandboxId);
    assert.equal(await again.files.read('/home/user/old.txt'), 'from 2.50');
  } finally {
    assert.equal(await Sandbox.kill(sbx.sandboxId), true);
  }
  assert.equal(await Sandbox.kill(sbx.sandboxId), false);
});
