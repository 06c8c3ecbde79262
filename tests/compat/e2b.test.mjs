// Drives kbridge with the real, unmodified E2B code-interpreter SDK (@e2b/code-interpreter,
// pinned in package.json) in debug mode. KBRIDGE_URL and KBRIDGE_TOKEN come from the
// environment; the token travels in the SDK's own slot (E2B-Traffic-Access-Token).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, NotFoundError } from '@e2b/code-interpreter';

const URL = process.env.KBRIDGE_URL.replace(/\/$/, '');
const TOKEN = process.env.KBRIDGE_TOKEN;

function sandbox() {
  // Sandbox.create({ debug: true }) would do the same without a token slot; the
  // constructor takes the tokens the SDK would otherwise get from E2B's API.
  return new Sandbox({ sandboxId: 'kbridge', envdVersion: '99.99.99', debug: true,
                       sandboxUrl: URL, trafficAccessToken: TOKEN });
}

test('stateful default context', async () => {
  const sbx = sandbox();
  await sbx.runCode('x = 1');
  const ex = await sbx.runCode('x += 1; x');
  assert.equal(ex.text, '2');
  assert.equal(ex.results[0].isMainResult, true);
  assert.ok(ex.executionCount >= 2);
});

test('streaming callbacks arrive in order, with the execution', async () => {
  const sbx = sandbox();
  const seen = [];
  const ex = await sbx.runCode(
    "import sys, time\nfor i in range(3):\n    print(f'out {i}', flush=True)\n    time.sleep(0.05)\n" +
    "print('err', file=sys.stderr, flush=True)\nfrom IPython.display import display\ndisplay('shown')\n'main'",
    { onStdout: (m) => seen.push(['stdout', m.line]), onStderr: (m) => seen.push(['stderr', m.line]),
      onResult: (r) => seen.push(['result', r.text]) });
  assert.deepEqual(seen, [['stdout', 'out 0\n'], ['stdout', 'out 1\n'], ['stdout', 'out 2\n'],
                          ['stderr', 'err\n'], ['result', 'shown'], ['result', 'main']]);
  assert.deepEqual(ex.logs.stdout, ['out 0\n', 'out 1\n', 'out 2\n']);
  assert.deepEqual(ex.logs.stderr, ['err\n']);
  assert.equal(ex.text, 'main');  // E2B strips the quotes of text/plain
});

test('matplotlib chart arrives as a PNG result', async () => {
  const ex = await sandbox().runCode('import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()');
  const png = ex.results.find((r) => r.png);
  assert.ok(png, 'a png result');
  assert.ok(Buffer.from(png.png, 'base64').subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])));
  assert.ok(png.formats().includes('png'));
});

test('pandas DataFrame arrives with html and text', async () => {
  const ex = await sandbox().runCode("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})");
  const r = ex.results[0];
  assert.ok(r.html.includes('<table'));
  assert.ok(r.text.includes('a'));
  assert.deepEqual(r.formats(), ['html']);
});

test('errors are data, with name, value and traceback', async () => {
  const errors = [];
  const ex = await sandbox().runCode("raise ValueError('bad thing')", { onError: (e) => errors.push(e) });
  assert.equal(ex.error.name, 'ValueError');
  assert.equal(ex.error.value, 'bad thing');
  assert.ok(ex.error.traceback.includes('ValueError'));
  assert.equal(errors.length, 1);
});

test('env vars for one execution, safely quoted, then restored', async () => {
  const sbx = sandbox();
  const value = 'it\'s "quoted" \\ back\nslash ✓ \u00e9';
  const ex = await sbx.runCode("import os\nprint(os.environ['KB_VAR'], end='')", { envs: { KB_VAR: value } });
  assert.equal(ex.logs.stdout.join(''), value);
  const after = await sbx.runCode("import os; os.getenv('KB_VAR', 'default')");
  assert.equal(after.text, 'default');
});

test('contexts: create with cwd, list, run, restart, remove', async () => {
  const sbx = sandbox();
  const ctx = await sbx.createCodeContext({ cwd: '/tmp', language: 'python' });
  assert.equal(ctx.language, 'python');
  assert.equal(ctx.cwd, '/tmp');
  const ex = await sbx.runCode('import os; os.getcwd()', { context: ctx });
  assert.equal(ex.text, '/tmp');
  await sbx.runCode('kept = 5', { context: ctx });
  assert.equal((await sbx.runCode('kept', { context: ctx })).text, '5');
  assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
  // Contexts are isolated from each other.
  assert.equal((await sbx.runCode('kept')).error?.name, 'NameError');
  await sbx.restartCodeContext(ctx);
  assert.equal((await sbx.runCode('kept', { context: ctx })).error.name, 'NameError');
  await sbx.removeCodeContext(ctx.id);
  assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
  // (The SDK leaves its request timer running when it throws; keep it short.)
  await assert.rejects(sbx.runCode('1', { context: ctx, requestTimeoutMs: 3000 }),
                       (e) => e instanceof NotFoundError);
});

test('language selection: r runs on IRkernel, with env vars', async () => {
  const sbx = sandbox();
  const ex = await sbx.runCode('x <- 20; x * 2 + 2', { language: 'r' });
  assert.equal(ex.error, undefined);
  assert.ok(ex.results[0].text.includes('42'));
  const env = await sbx.runCode('cat(Sys.getenv("KB_R"))', { language: 'r', envs: { KB_R: 'r "value" ✓' } });
  assert.equal(env.logs.stdout.join(''), 'r "value" ✓');
  const unset = await sbx.runCode('cat(Sys.getenv("KB_R", "gone"))', { language: 'R ' });
  assert.equal(unset.logs.stdout.join(''), 'gone');
  const py = await sbx.runCode('import sys; sys.version_info[0]', { language: 'python' });
  assert.equal(py.text, '3');
});

test('timeoutMs interrupts a sleep and the context stays usable', async () => {
  const sbx = sandbox();
  const ctx = await sbx.createCodeContext();
  const t0 = Date.now();
  await assert.rejects(sbx.runCode('import time; time.sleep(60)', { context: ctx, timeoutMs: 2000 }),
                       (e) => e.name === 'TimeoutError');
  assert.ok(Date.now() - t0 < 5000);
  const ex = await sbx.runCode('1 + 1', { context: ctx });
  assert.equal(ex.error, undefined);
  assert.equal(ex.text, '2');
  await sbx.removeCodeContext(ctx);
});

test('result conventions: unknown MIME types reach formats(), e2b/data passes through', async () => {
  const ex = await sandbox().runCode(
    "from IPython.display import display\n" +
    "display({'text/plain': 'p', 'application/vnd.custom+json': {'k': 1}, 'e2b/data': {'a': [1, 2]}}, raw=True)");
  const r = ex.results[0];
  assert.deepEqual(r.data, { a: [1, 2] });
  assert.ok(r.formats().includes('data'));
  assert.ok(r.formats().includes('application/vnd.custom+json'));
  assert.deepEqual(r.extra['application/vnd.custom+json'], { k: 1 });
});

test('executions in one context are serialized, different contexts run in parallel', async () => {
  const sbx = sandbox();
  const a = await sbx.createCodeContext();
  const b = await sbx.createCodeContext();
  const t0 = Date.now();
  const runs = await Promise.all([
    sbx.runCode('import time; time.sleep(1); "a1"', { context: a }),
    sbx.runCode('import time; time.sleep(1); "b1"', { context: b }),
  ]);
  const parallel = Date.now() - t0;
  assert.deepEqual(runs.map((r) => r.text), ['a1', 'b1']);
  assert.ok(parallel < 1900, `contexts ran in parallel (${parallel} ms)`);
  const t1 = Date.now();
  const serial = await Promise.all([
    sbx.runCode('import time; t = time.time(); time.sleep(0.7); t', { context: a }),
    sbx.runCode('import time; t = time.time(); time.sleep(0.7); t', { context: a }),
  ]);
  assert.ok(Date.now() - t1 >= 1400, 'one context runs one execution at a time');
  assert.ok(Math.abs(Number(serial[1].text) - Number(serial[0].text)) >= 0.69);
  await sbx.removeCodeContext(a);
  await sbx.removeCodeContext(b);
});
