#!/usr/bin/env node
// The official E2B SDK, unmodified and in its normal mode, with kbridge as a self-hosted
// E2B: sandboxes, their files and commands, and code run inside them.
//
//   npm install @e2b/code-interpreter        (or reuse tests/compat: NODE_PATH=tests/compat/node_modules)
//   E2B_API_URL=http://127.0.0.1:PORT E2B_SANDBOX_URL=http://127.0.0.1:PORT \
//   E2B_API_KEY=$KBRIDGE_TOKEN node examples/e2b_selfhost.js
//
// No E2B_DEBUG: the SDK creates a real sandbox through kbridge's control plane and
// reaches its envd and code interpreter through the same port, naming the sandbox in
// the E2b-Sandbox-Id header.
const { Sandbox } = require('@e2b/code-interpreter');

async function main() {
  const sandbox = await Sandbox.create({ envs: { GREETING: 'hello from the sandbox' }, timeoutMs: 120_000 });
  console.log('sandbox', sandbox.sandboxId);
  try {
    await sandbox.files.write('/home/user/data.csv', 'x,y\n1,2\n3,4\n');
    const listing = await sandbox.files.list('/home/user');
    console.log('files:', listing.map((e) => e.name).sort().join(' '));

    const run = await sandbox.commands.run('wc -l data.csv && echo $GREETING');
    console.log('command says:', run.stdout.trim().split('\n').join(' | '));

    const ex = await sandbox.runCode(
      "import csv\nrows = list(csv.DictReader(open('/home/user/data.csv')))\nsum(int(r['y']) for r in rows)");
    console.log('sum of y:', ex.text);

    await sandbox.runCode("open('/home/user/out.txt', 'w').write('written by the kernel')");
    console.log('read back:', await sandbox.files.read('/home/user/out.txt'));
  } finally {
    await sandbox.kill();
  }
  console.log('running after kill:', await sandbox.isRunning());
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
