// E2B SDK: Sandbox.create -> first runCode result, N times, each once the warm pools are
// full again (GET /api/status) when POOL=1. Prints one JSON line of seconds for
// bench/pool_bench.py, which starts kbridge and does the arithmetic.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const mods = path.join(here, '..', 'tests', 'compat', 'node_modules');
const { Sandbox } = await import(path.join(mods, '@e2b', 'code-interpreter', 'dist', 'index.mjs'));

const N = Number(process.env.N || 5);
const api = process.env.E2B_API_URL, key = process.env.E2B_API_KEY;
const now = () => performance.now();

async function poolFull() {
  for (let i = 0; i < 1200; i++) {
    const r = await fetch(`${api}/api/status`, { headers: { Authorization: `token ${key}` } });
    const p = (await r.json()).pool;
    if (p.kernels.ready >= p.kernels.target &&
        Object.values(p.sandboxes.templates).every((t) => t.ready >= p.sandboxes.target) && !p.refilling)
      return;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  throw new Error('the warm pools did not fill');
}

const create = [], first = [];
// One unmeasured round: the SDK's own first-use costs (module init, connections).
for (let i = -1; i < N; i++) {
  if (process.env.POOL === '1') await poolFull();
  const t0 = now();
  const sbx = await Sandbox.create();
  const t1 = now();
  const r = await sbx.runCode('1 + 1');
  const t2 = now();
  if (r.text !== '2') throw new Error(`runCode gave ${JSON.stringify(r.text)}`);
  if (i >= 0) {
    create.push((t1 - t0) / 1000);
    first.push((t2 - t0) / 1000);
  }
  await sbx.kill();
}
console.log(JSON.stringify({ create, first }));
