// chat.test.mjs - examples/chat in headless chromium, from its own origin, against a real
// kbridge: streaming lines shown as they come, an inline chart, a DataFrame, an error, the
// summary, a screenshot that is not blank, and the sandbox's end.
// Env: KBRIDGE_URL, KBRIDGE_TOKEN, CHAT_URL (the page's origin, served apart), SHOT_DIR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { launch } from './browser.mjs';

const KBRIDGE = process.env.KBRIDGE_URL;
const TOKEN = process.env.KBRIDGE_TOKEN;
const CHAT = process.env.CHAT_URL;
const SHOT_DIR = process.env.SHOT_DIR || '.';
// Generous: the ASan build on a shared machine starts sandboxes and kernels slowly.
const WAIT = 180_000;

async function runPreset(page, preset) {
  const before = await page.locator('.turn.assistant').count();
  await page.selectOption('#preset', preset);
  await page.click('#run');
  const turn = page.locator('.turn.assistant').nth(before);
  await turn.waitFor({ timeout: WAIT });
  await page.waitForFunction((i) => {
    const t = document.querySelectorAll('.turn.assistant')[i];
    return t && t.dataset.state !== 'running';
  }, before, { timeout: WAIT });
  return turn;
}

// How many distinct colours a PNG has, and the share of pixels unlike its corner's: decoded
// by chromium itself in a blank page (no CSP there).
async function pixelStats(browser, png) {
  const page = await browser.newPage();
  try {
    return await page.evaluate(async (b64) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const c = document.createElement('canvas');
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      const colours = new Set();
      let unlike = 0;
      for (let i = 0; i < d.length; i += 4) {
        colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        if (Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1]) + Math.abs(d[i + 2] - d[2]) > 30) unlike++;
      }
      return { width: c.width, height: c.height, colours: colours.size, unlike: unlike / (d.length / 4) };
    }, png.toString('base64'));
  } finally {
    await page.close();
  }
}

test('the chat example renders an assistant turn that runs in a sandbox', { timeout: 900_000 }, async () => {
  assert.ok(KBRIDGE && TOKEN && CHAT, 'KBRIDGE_URL, KBRIDGE_TOKEN and CHAT_URL are set');
  assert.notEqual(new URL(CHAT).origin, new URL(KBRIDGE).origin, 'the page has an origin of its own');
  const browser = await launch();
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 1000 } });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });

    const params = new URLSearchParams({ server: KBRIDGE, token: TOKEN });
    await page.goto(`${CHAT}#${params}`);
    await page.waitForFunction(() => document.getElementById('status').dataset.state === 'ready', null,
                               { timeout: WAIT });
    assert.equal(await page.evaluate(() => location.hash), '', 'the token left the address bar');
    assert.match(await page.textContent('#status'), /^sandbox \S+/);

    // Record, as the DOM changes, the lines shown and whether the turn had ended then.
    await page.evaluate(() => {
      window.__seen = [];
      new MutationObserver(() => {
        const t = document.querySelector('.turn.assistant[data-id="cell-1"]');
        if (!t) return;
        window.__seen.push({
          lines: [...t.querySelectorAll('.line.stdout')].map((l) => l.textContent),
          summary: !!t.querySelector('.summary'),
          state: t.dataset.state,
        });
      }).observe(document.getElementById('transcript'), { childList: true, subtree: true, characterData: true });
    });

    // 1. Three lines 300 ms apart: the first is on the page before the cell ends; order exact.
    const stream = await runPreset(page, 'stream');
    assert.equal(await stream.getAttribute('data-state'), 'done');
    assert.deepEqual(await stream.locator('.line.stdout').allTextContents(), ['line 1', 'line 2', 'line 3']);
    const seen = await page.evaluate(() => window.__seen);
    const firstShown = seen.findIndex((s) => s.lines.length > 0);
    assert.ok(firstShown >= 0, 'lines were seen');
    assert.deepEqual(seen[firstShown].lines, ['line 1'], 'line 1 alone first');
    assert.equal(seen[firstShown].summary, false, 'line 1 was shown before the end');
    assert.equal(seen[firstShown].state, 'running');
    const orders = seen.filter((s) => s.lines.length).map((s) => s.lines.join('|'));
    for (const o of orders) assert.ok('line 1|line 2|line 3'.startsWith(o), `order ${o}`);
    assert.ok(orders.includes('line 1|line 2') && !seen.find((s) => s.lines.length === 2).summary,
              'line 2 was shown before the end too');
    const streamCode = await stream.locator('pre.code').textContent();
    assert.match(streamCode, /time\.sleep\(0\.3\)/, 'the code block is shown');
    assert.match(await stream.locator('.summary').textContent(), /Execution \d+ · [\d.]+ s · 3 stdout lines · 0 results · no error/);

    // 2. A matplotlib chart, inline, with real pixels.
    const chart = await runPreset(page, 'chart');
    assert.equal(await chart.getAttribute('data-state'), 'done', await chart.textContent());
    const img = chart.locator('img.result');
    await img.waitFor({ timeout: WAIT });
    await page.waitForFunction((i) => {
      const im = document.querySelectorAll('.turn.assistant')[i].querySelector('img.result');
      return im && im.complete && im.naturalWidth > 0;
    }, 1, { timeout: WAIT });
    const natural = await img.evaluate((im) => [im.naturalWidth, im.naturalHeight]);
    assert.ok(natural[0] > 100 && natural[1] > 50, `natural size ${natural}`);
    assert.deepEqual(await chart.locator('.line.stdout').allTextContents(), ['plotting 200 points']);
    assert.match(await chart.locator('.summary').textContent(), /1 result/);

    // 3. A DataFrame: its HTML in an iframe sandboxed without scripts.
    const table = await runPreset(page, 'table');
    const frameEl = table.locator('iframe.result');
    assert.equal(await frameEl.getAttribute('sandbox'), '');
    const frame = await (await frameEl.elementHandle()).contentFrame();
    await frame.waitForSelector('table', { timeout: WAIT });
    assert.match(await frame.textContent('table'), /Oslo[\s\S]*Lima[\s\S]*Pune/);

    // 4. An error, readably: name, value, traceback, after the output that came first.
    const err = await runPreset(page, 'error');
    assert.equal(await err.getAttribute('data-state'), 'failed');
    assert.equal(await err.locator('.error .ename').textContent(), 'ZeroDivisionError');
    const box = await err.locator('.error').textContent();
    assert.match(box, /ZeroDivisionError: division by zero/);
    assert.match(await err.locator('.error .traceback').textContent(), /ratio/);
    assert.doesNotMatch(box, /\x1b\[/, 'no terminal colour codes');
    const order = await err.locator('.output > *').evaluateAll((els) => els.map((e) => e.className));
    assert.deepEqual(order, ['line stdout', 'error'], 'the print, then the error');
    assert.match(await err.locator('.summary').textContent(), /failed: ZeroDivisionError/);

    // Every turn ends with its summary, last in the bubble.
    const lastChild = await page.locator('.turn.assistant .bubble').evaluateAll(
      (bs) => bs.map((b) => b.lastElementChild.className));
    assert.deepEqual(lastChild, ['summary', 'summary', 'summary', 'summary failed']);

    // 5. A screenshot that is not blank.
    fs.mkdirSync(SHOT_DIR, { recursive: true });
    const file = path.join(SHOT_DIR, 'chat.png');
    const png = await page.screenshot({ path: file, fullPage: true });
    const stats = await pixelStats(browser, png);
    assert.ok(stats.width >= 1000 && stats.colours > 50 && stats.unlike > 0.05,
              `screenshot looks blank: ${JSON.stringify(stats)}`);

    // 6. The sandbox ends (killed through the REST API): the page says so.
    const sid = (await page.textContent('#status')).replace(/^sandbox /, '');
    const res = await fetch(`${KBRIDGE}/sandboxes/${sid}`, { method: 'DELETE', headers: { 'X-API-Key': TOKEN } });
    assert.equal(res.status, 204);
    await page.waitForFunction(() => document.getElementById('status').dataset.state === 'ended', null,
                               { timeout: WAIT });
    assert.match(await page.locator('.notice').last().textContent(), /ended/);
    assert.equal(await page.isDisabled('#run'), true);

    assert.deepEqual(problems, [], 'no page errors, console errors or CSP violations');
  } finally {
    await browser.close();
  }
});
