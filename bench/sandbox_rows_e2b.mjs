// bench/sandbox_rows.py's E2B SDK part: commands.run('true') through tests/compat's pinned
// e2b SDK, non-debug mode, against kbridge. Prints one JSON line: {"run_true_ms": [...]}.
// E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY point at kbridge; N runs after 5 untimed.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const mods = path.join(here, '..', 'tests', 'compat', 'node_modules');
const { Sandbox } = await import(path.join(mods, 'e2b', 'dist', 'index.mjs'));

const N = Number(process.env.N || 50);
const sbx = await Sandbox.create();
const out = { run_true_ms: [], run_true_exit: null };
try {
  for (let i = 0; i < 5; i++) await sbx.commands.run('true');
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    const r = await sbx.commands.run('true');
    out.run_true_ms.push(performance.now() - t0);
    out.run_true_exit = r.exitCode;
  }
} finally {
  await sbx.kill();
}
console.log(JSON.stringify(out));
