// The official E2B SDK (tests/compat's pinned e2b and @e2b/code-interpreter) against
// kbridge as a self-hosted E2B, in non-debug mode: what an E2B user's code pays.
//
//   /usr/bin/python3 bench/e2b_sdk.py        (starts kbridge, then runs this)
//
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY point at kbridge. Prints medians; the
// baselines, measured in the same run, are the same operations one level down: a raw
// control-plane POST for create, a raw envd POST /files for writes. Not a test.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const mods = path.join(here, '..', 'tests', 'compat', 'node_modules');
const { Sandbox } = await import(path.join(mods, '@e2b', 'code-interpreter', 'dist', 'index.mjs'));

const N = Number(process.env.N || 10);
const api = process.env.E2B_API_URL, key = process.env.E2B_API_KEY;
const now = () => performance.now();
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const ms = (x) => `${x.toFixed(1).padStart(8)} ms`;

// Baseline: the control plane's create itself (no SDK), then kill.
const raw = [];
for (let i = 0; i < N; i++) {
  const t0 = now();
  const r = await fetch(`${api}/sandboxes`, { method: 'POST', headers: { 'X-API-Key': key, 'Content-Type': 'application/json' }, body: '{}' });
  const sb = await r.json();
  raw.push(now() - t0);
  await fetch(`${api}/sandboxes/${sb.sandboxID}`, { method: 'DELETE', headers: { 'X-API-Key': key } });
}

const create = [], first = [], cmd = [];
for (let i = 0; i < N; i++) {
  const t0 = now();
  const sbx = await Sandbox.create();
  const t1 = now();
  await sbx.runCode('1 + 1');
  const t2 = now();
  create.push(t1 - t0);
  first.push(t2 - t0);
  if (i === 0) {
    for (let j = 0; j < 20; j++) {
      const a = now();
      await sbx.commands.run('true');
      cmd.push(now() - a);
    }
  }
  await sbx.kill();
}

const sbx = await Sandbox.create();
const files = [];
for (const size of [1 << 20, 100 << 20]) {
  const data = new Uint8Array(size).map((_, i) => i & 255);
  const t0 = now();
  await sbx.files.write('/home/user/blob', data.buffer);
  const t1 = now();
  const back = await sbx.files.read('/home/user/blob', { format: 'bytes' });
  const t2 = now();
  if (back.length !== size) throw new Error(`read ${back.length} of ${size} bytes`);
  files.push([size, t1 - t0, t2 - t1]);
}
await sbx.kill();

console.log(`E2B SDK against kbridge, ${N} sandboxes (medians), one run:`);
console.log(`  POST /sandboxes (raw, baseline)     ${ms(median(raw))}`);
console.log(`  Sandbox.create                      ${ms(median(create))}   ${(median(create) / median(raw)).toFixed(2)}x the raw create`);
console.log(`  Sandbox.create -> first runCode     ${ms(median(first))}`);
console.log(`  commands.run('true') round trip     ${ms(median(cmd))}   (20 runs)`);
for (const [size, w, r] of files)
  console.log(`  files.write / read ${String(size >> 20).padStart(3)} MB          ${ms(w)} / ${ms(r)}   ${(size / 1048576 / (w / 1000)).toFixed(0)} / ${(size / 1048576 / (r / 1000)).toFixed(0)} MB/s`);
