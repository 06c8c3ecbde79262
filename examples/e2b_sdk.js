#!/usr/bin/env node
// The official E2B code-interpreter SDK, unmodified, running code through kbridge.
//
//   npm install @e2b/code-interpreter        (or reuse tests/compat: NODE_PATH=tests/compat/node_modules)
//   KBRIDGE_TOKEN=... E2B_DEBUG=true node examples/e2b_sdk.js
//
// With E2B_DEBUG=true the SDK talks plain HTTP to localhost:49999, kbridge's default
// address; E2B_SANDBOX_URL=http://127.0.0.1:PORT points it elsewhere. The kbridge token
// travels in the SDK's own slot, trafficAccessToken (sent as E2B-Traffic-Access-Token).
const { Sandbox } = require('@e2b/code-interpreter');

async function main() {
  const sandbox = new Sandbox({
    sandboxId: 'kbridge',        // any name: nothing is created at E2B
    envdVersion: '99.99.99',     // what the SDK assumes in debug mode
    debug: true,
    trafficAccessToken: process.env.KBRIDGE_TOKEN,
  });

  await sandbox.runCode('x = 1');
  const execution = await sandbox.runCode('x += 1; x', {
    onStdout: (out) => process.stdout.write(`stdout: ${out.line}`),
  });
  console.log('x is', execution.text);

  const chart = await sandbox.runCode(
    'import matplotlib.pyplot as plt\nprint("drawing")\nplt.plot([1, 4, 9])\nplt.show()',
    { onStdout: (out) => process.stdout.write(`stdout: ${out.line}`) });
  const png = chart.results.find((r) => r.png);
  console.log('chart formats:', png.formats(), `(${Buffer.from(png.png, 'base64').length} bytes of PNG)`);

  const env = await sandbox.runCode('import os; os.environ["GREETING"]', { envs: { GREETING: 'hello from E2B' } });
  console.log('env var:', env.text);

  const ctx = await sandbox.createCodeContext({ cwd: '/tmp' });
  console.log('context cwd:', (await sandbox.runCode('import os; os.getcwd()', { context: ctx })).text);
  await sandbox.removeCodeContext(ctx);

  const r = await sandbox.runCode('v <- c(1, 2, 3); sum(v)', { language: 'r' });
  console.log('R says:', r.results[0]?.text ?? r.error);

  const failed = await sandbox.runCode('1 / 0');
  console.log('error:', failed.error.name, '-', failed.error.value);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
