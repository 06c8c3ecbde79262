// The web console in a real browser (Debian's chromium through playwright-core), against a
// real kbridge that tests/integration/test_browser_console.py starts. Env: KBRIDGE_CONSOLE_URL
// (the banner's first URL), KBRIDGE_URL, KBRIDGE_TOKEN, OUT_DIR (screenshots go there).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { launch } from './browser.mjs';

const CONSOLE_URL = process.env.KBRIDGE_CONSOLE_URL;
const BASE = process.env.KBRIDGE_URL;
const TOKEN = process.env.KBRIDGE_TOKEN;
const OUT = process.env.OUT_DIR || '.';
// Generous: the ASan build starts sandboxes and kernels several times slower.
const LONG = 180_000;

let browser;
let page;
let sandboxId;
const pageErrors = [];

async function rest(method, p, body) {
  const r = await fetch(BASE + p, {
    method, headers: { 'X-API-Key': TOKEN, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function shot(name, p = page) {
  await p.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: true });
}

async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 }, acceptDownloads: true });
  const p = await ctx.newPage();
  p.on('pageerror', (e) => pageErrors.push(String(e)));
  p.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
  p.on('dialog', (d) => d.accept());
  return p;
}

// Types code into the last (empty) cell, runs it; returns that cell's locator.
async function run(code) {
  const cells = page.locator('#cells .cell');
  await cells.last().locator('textarea:not([disabled])').waitFor({ timeout: LONG });
  const cell = cells.nth((await cells.count()) - 1);
  await cell.locator('textarea').fill(code);
  await cell.locator('button.run').click();
  return cell;
}

async function done(cell) {
  await page.waitForFunction((el) => el.dataset.state === 'done', await cell.elementHandle(), { timeout: LONG });
}

before(async () => {
  assert.ok(CONSOLE_URL && BASE && TOKEN, 'KBRIDGE_CONSOLE_URL, KBRIDGE_URL and KBRIDGE_TOKEN are needed');
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
});

test('no token: a prompt, not a broken page', async () => {
  const p = await newPage();
  await p.goto(BASE + '/');
  await p.locator('#token-prompt').waitFor({ timeout: LONG });
  assert.match(await p.locator('#token-prompt h1').innerText(), /needs kbridge's token/);
  await shot('01-no-token', p);
  await p.context().close();
});

test('a wrong token: a clear prompt, then the right one works', async () => {
  const p = await newPage();
  await p.goto(BASE + '/#token=wrong-token');
  await p.locator('#token-prompt').waitFor({ timeout: LONG });
  assert.match(await p.locator('#token-prompt h1').innerText(), /refused/);
  // The fragment left the address bar: the token is not left in the URL or history.
  assert.ok(!p.url().includes('wrong-token'), p.url());
  await shot('02-wrong-token', p);
  await p.fill('#token-input', CONSOLE_URL);
  await p.click('#token-go');
  await p.locator('#sandboxes').waitFor({ timeout: LONG });
  await p.context().close();
});

test('opens with the banner URL; the token stays out of the page\'s URL', async () => {
  page = await newPage();
  await page.goto(CONSOLE_URL);
  await page.locator('#sandboxes').waitFor({ timeout: LONG });
  assert.ok(!page.url().includes(TOKEN));
  assert.equal(await page.evaluate(() => sessionStorage.getItem('kbridge.token')), TOKEN);
  assert.equal(await page.evaluate(() => document.cookie), '');
});

test('create a sandbox with metadata; it is listed', async () => {
  await page.fill('#new-metadata', 'owner=browser-test');
  await page.fill('#new-timeout', '900');
  await page.click('#create-sandbox');
  await page.waitForURL(/#\/sandbox\/[^/]+$/, { timeout: LONG });
  sandboxId = decodeURIComponent(page.url().split('#/sandbox/')[1]);
  const r = await rest('GET', `/sandboxes/${sandboxId}`);
  assert.equal(r.status, 200);
  assert.equal(r.body.metadata.owner, 'browser-test');
  await page.locator('#kernel-picker option[value="python3"]').waitFor({ state: 'attached', timeout: LONG });
  // The first cell starts the kernel: the streaming check below then times only the cell.
  const cell = await run('1 + 1');
  await done(cell);
  assert.equal(await cell.locator('.output pre.text').innerText(), '2',
    await cell.locator('.output').innerText());
});

test('output streams as produced, in order', async () => {
  const cell = await run('import time\nfor i in range(3):\n    print(f"line {i}", flush=True)\n    time.sleep(0.3)');
  // Read in one go in the page, at the first moment line 0 shows: the cell is still running.
  const seen = await page.waitForFunction(() => {
    const cells = document.querySelectorAll('#cells .cell');
    const c = cells[cells.length - 2];
    const pre = c && c.querySelector('.output pre.stdout');
    return pre && pre.textContent.includes('line 0') ? { text: pre.textContent, state: c.dataset.state } : null;
  }, null, { timeout: LONG, polling: 'raf' }).then((hd) => hd.jsonValue());
  assert.equal(seen.state, 'running', JSON.stringify(seen));
  assert.ok(!seen.text.includes('line 2'), JSON.stringify(seen));
  await done(cell);
  assert.equal(await cell.locator('.output pre.stdout').textContent(), 'line 0\nline 1\nline 2\n');
  assert.match(await cell.locator('.count').innerText(), /\[\d+\]/);
});

test('a matplotlib chart is an image with real pixels', async () => {
  const cell = await run('import matplotlib.pyplot as plt\nplt.figure(figsize=(4, 2.5))\nplt.plot([1, 3, 2, 4])\nplt.title("kbridge")\nplt.show()');
  await done(cell);
  const img = cell.locator('.output img');
  await img.waitFor({ timeout: LONG });
  const w = await img.evaluate((el) => el.complete ? el.naturalWidth : new Promise((res) => { el.onload = () => res(el.naturalWidth); }));
  assert.ok(w > 0, `naturalWidth ${w}`);
});

test('a DataFrame renders as a table (in its sandboxed frame)', async () => {
  const cell = await run('import pandas as pd\npd.DataFrame({"fruit": ["apple", "pear"], "n": [3, 5]})');
  await done(cell);
  const frame = cell.frameLocator('iframe.result-frame');
  await frame.locator('table').waitFor({ timeout: LONG });
  assert.deepEqual(await frame.locator('table thead th').allInnerTexts().then((a) => a.map((s) => s.trim()).filter(Boolean)), ['fruit', 'n']);
  assert.equal((await frame.locator('table tbody tr').count()), 2);
  await cell.locator('iframe.result-frame').evaluate((f) => {
    if (f.getAttribute('sandbox') !== 'allow-scripts') throw new Error(`sandbox=${f.getAttribute('sandbox')}`);
  });
});

test('an error shows its name and traceback', async () => {
  const cell = await run('def f():\n    return 1 / 0\nf()');
  await done(cell);
  assert.equal(await cell.locator('.error .ename').innerText(), 'ZeroDivisionError');
  const tb = await cell.locator('.error .traceback').innerText();
  assert.match(tb, /ZeroDivisionError/);
  assert.match(tb, /return 1 \/ 0/);
  await shot('03-notebook');
});

test('a result\'s HTML cannot read the console\'s token or DOM', async () => {
  const probe = `
<div id="r">pending</div>
<script>
var out = [];
try { out.push('ss:' + sessionStorage.getItem('kbridge.token')); } catch (e) { out.push('ss-blocked:' + e.name); }
try { out.push('pd:' + parent.document.title); } catch (e) { out.push('pd-blocked:' + e.name); }
try { out.push('ls:' + localStorage.length); } catch (e) { out.push('ls-blocked:' + e.name); }
try { out.push('ck:' + document.cookie); } catch (e) { out.push('ck-blocked:' + e.name); }
document.getElementById('r').textContent = out.join(' ');
</script>`;
  const cell = await run(`from IPython.display import HTML, display\ndisplay(HTML(${JSON.stringify(probe)}))`);
  await done(cell);
  const r = cell.frameLocator('iframe.result-frame').locator('#r');
  // The script ran (the text changed) and every attempt failed.
  await assert.doesNotReject(r.filter({ hasNotText: 'pending' }).waitFor({ timeout: LONG }));
  const text = await r.innerText();
  assert.match(text, /ss-blocked:SecurityError/, text);
  assert.match(text, /pd-blocked:SecurityError/, text);
  assert.match(text, /ls-blocked:SecurityError/, text);
  assert.ok(!text.includes(TOKEN), text);
});

test('a kernel that dies mid-cell shows the error', async () => {
  const cell = await run('import os, time\nprint("before", flush=True)\ntime.sleep(0.3)\nos.kill(os.getpid(), 9)');
  await done(cell);
  assert.equal(await cell.locator('.error .ename').first().innerText(), 'KernelDied');
  assert.equal(await cell.locator('.output pre.stdout').textContent(), 'before\n');
});

test('a 50 MB output shows its tail and says how much was cut', async () => {
  const cell = await run('import sys\nline = "x" * 1023 + "\\n"\nfor i in range(50 * 1024):\n    sys.stdout.write(line)\nprint("THE END")');
  await done(cell);
  // A loaded machine may interleave a kernel warning on stderr, splitting stdout in blocks.
  const texts = await cell.locator('.output pre.stdout').allTextContents();
  const text = texts[texts.length - 1];
  assert.ok(text.endsWith('THE END\n'), text.slice(-100));
  for (const t of texts) assert.ok(t.length <= 256 * 1024, `kept ${t.length}`);
  const cuts = await cell.locator('.output .stream:has(pre.stdout) .cut:not([hidden])').allInnerTexts();
  assert.ok(cuts.length >= 1 && cuts.every((c) => /MiB of output cut: showing the last/.test(c)), JSON.stringify(cuts));
  // The page still answers.
  assert.equal(await page.evaluate(() => 1 + 1), 2);
});

test('files: upload, see it listed, download the same bytes', async () => {
  await page.click('#tab-files');
  await page.locator('#files-rows tr').first().waitFor({ timeout: LONG });
  const bytes = crypto.randomBytes(200 * 1024);
  await page.setInputFiles('#upload', { name: 'upload.bin', mimeType: 'application/octet-stream', buffer: bytes });
  const row = page.locator('#files-rows tr[data-name="upload.bin"]');
  await row.waitFor({ timeout: LONG });
  assert.match(await row.innerText(), /200\.0 KiB/);
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: LONG }), row.locator('button.download').click()]);
  assert.equal(dl.suggestedFilename(), 'upload.bin');
  const got = fs.readFileSync(await dl.path());
  assert.ok(got.equals(bytes), `downloaded ${got.length} bytes, not the ${bytes.length} uploaded`);
  await shot('04-files');
});

test('the terminal: echo hi shows hi', async () => {
  await page.click('#tab-terminal');
  await page.locator('#terminal-state', { hasText: 'pid' }).waitFor({ timeout: LONG });
  await page.locator('#terminal .xterm').click();
  await page.keyboard.type('echo hi\n');
  await page.waitForFunction(() => [...document.querySelectorAll('#terminal .xterm-rows > div')]
    .some((row) => row.textContent.trim() === 'hi'), null, { timeout: LONG });
  await shot('05-terminal');
});

test('the status page shows /api/status and the figures of /metrics', async () => {
  await page.goto(CONSOLE_URL.split('#')[0] + '#/status');
  await page.locator('#api-status table').waitFor({ timeout: LONG });
  assert.match(await page.locator('#api-status').innerText(), /kernels/);
  await page.locator('#metrics tr[data-metric]').first().waitFor({ timeout: LONG });
  const metrics = await fetch(BASE + '/metrics', { headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(metrics.status, 200);
  // The page shows the same families the server exposes.
  const exposed = await metrics.text();
  const shown = await page.locator('#metrics').innerText();
  for (const family of ['kbridge_executions_total', 'kbridge_sandboxes', 'kbridge_kernels']) {
    assert.ok(exposed.includes(family), `${family} is not in /metrics`);
    assert.match(shown, new RegExp(family), `${family} is not on the status page`);
  }
  await shot('06-status');
});

test('a sandbox that ends while open says it ended', async () => {
  const r = await rest('POST', '/sandboxes', { timeout: 600, metadata: { owner: 'ends-while-open' } });
  assert.equal(r.status, 201);
  const id = r.body.sandboxID;
  await page.goto(CONSOLE_URL.split('#')[0] + `#/sandbox/${id}`);
  const cell = await run('1 + 1');
  await done(cell);
  assert.equal(await cell.locator('.output pre.text').innerText(), '2');
  assert.equal((await rest('DELETE', `/sandboxes/${id}`)).status, 204);
  await page.locator('#sandbox-ended').waitFor({ timeout: LONG });
  assert.match(await page.locator('#sandbox-ended').innerText(), /ended/);
  assert.ok(await page.locator('#cells textarea').last().isDisabled());
  await shot('07-ended');
  // Opened again later: it says so too.
  await page.goto(CONSOLE_URL.split('#')[0] + '#/');
  await page.goto(CONSOLE_URL.split('#')[0] + `#/sandbox/${id}`);
  await page.locator('#sandbox-ended', { hasText: 'does not exist' }).waitFor({ timeout: LONG });
});

test('kill the sandbox from the list: it is gone', async () => {
  await page.goto(CONSOLE_URL.split('#')[0] + '#/');
  const row = page.locator(`#sandbox-rows tr[data-sandbox="${sandboxId}"]`);
  await row.waitFor({ timeout: LONG });
  assert.match(await row.innerText(), /owner=browser-test/);
  assert.match(await row.locator('td.state').innerText(), /running/);
  await shot('08-sandboxes');
  await row.locator('button[data-action="pause"]').click();
  await row.locator('td.state', { hasText: 'paused' }).waitFor({ timeout: LONG });
  assert.equal((await rest('GET', `/sandboxes/${sandboxId}`)).body.state, 'paused');
  await row.locator('button[data-action="resume"]').click();
  await row.locator('td.state', { hasText: 'running' }).waitFor({ timeout: LONG });
  await row.locator('button[data-action="kill"]').click();
  await row.waitFor({ state: 'detached', timeout: LONG });
  assert.equal((await rest('GET', `/sandboxes/${sandboxId}`)).status, 404);
});

test('no script error on any page', () => {
  // Refused tokens, a /metrics not there yet and a sandbox that is gone are failed requests
  // the browser logs; nothing else may be.
  const bad = pageErrors.filter((e) => !/Failed to load resource: the server responded with a status of 40[134]/.test(e));
  assert.deepEqual(bad, []);
});
