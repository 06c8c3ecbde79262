// browser.mjs - the one place that launches a browser for the browser tests: Debian's
// chromium, headless, driven by playwright-core (pinned in tests/compat/package.json).
// Tests import it as ../browser/browser.mjs and run with tests/compat/node_modules.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'compat', 'package.json'));
const { chromium } = require('playwright-core');

// The flags a container without a display, a GPU or a user namespace for chromium's own
// sandbox needs; background networking off so a test run makes no outside connection.
export const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-default-apps',
  '--disable-extensions',
  '--disable-sync',
  '--metrics-recording-only',
  '--no-first-run',
  '--mute-audio',
];

export function chromiumPath() {
  for (const p of [process.env.CHROMIUM_BIN, '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (p && fs.existsSync(p)) return p;
  }
  throw new Error('chromium not found: scripts/setup.sh --test installs Debian\'s chromium');
}

export async function launch() {
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_FLAGS });
}
