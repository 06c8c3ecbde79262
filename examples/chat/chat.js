// chat.js - a chat UI's assistant turn whose code runs in a kbridge sandbox, over kbridge's
// native WebSocket API (/ws). No framework, no build step: what a real chat front end does
// with the events, in one file. Text from the kernel only ever goes through textContent;
// HTML results render in iframes sandboxed without scripts or our origin.

const PRESETS = {
  stream: "import time\nfor i in range(1, 4):\n    print(f'line {i}', flush=True)\n    time.sleep(0.3)\n",
  chart: [
    'import numpy as np',
    'import matplotlib.pyplot as plt',
    '',
    'x = np.linspace(0, 2 * np.pi, 200)',
    'print("plotting", len(x), "points")',
    'fig, ax = plt.subplots(figsize=(6, 3))',
    'ax.plot(x, np.sin(x), label="sin")',
    'ax.plot(x, np.cos(x), label="cos")',
    'ax.set_title("a chart from the sandbox")',
    'ax.legend()',
    'plt.show()',
  ].join('\n') + '\n',
  table: "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'temp_c': [4.5, 19.0, 31.2]})\n",
  error: "def ratio(a, b):\n    return a / b\n\nprint('about to divide')\nratio(1, 0)\n",
};

// A cell's output is bounded on the page: past these, the oldest lines go and the page
// says how many (a 50 MB print must not freeze the tab).
const MAX_LINES = 2000;
const MAX_LINE_CHARS = 20000;

const $ = (id) => document.getElementById(id);
const transcript = $('transcript');
const statusEl = $('status');
const runBtn = $('run');
const codeEl = $('code');

let ws = null;
let nextId = 1;
const turns = new Map(); // request id -> turn

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
  runBtn.disabled = state !== 'ready';
}

function nearBottom() {
  return window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
}

function stick(wasNear) {
  if (wasNear) window.scrollTo(0, document.body.scrollHeight);
}

function notice(text) {
  transcript.append(el('div', 'notice', text));
}

// ---------------------------------------------------------------------------------------
// Settings: from the page's fragment (#server=...&token=..., never sent to a server),
// kept in sessionStorage, editable in the header.

function loadSettings() {
  const saved = JSON.parse(sessionStorage.getItem('kbridge-chat') || '{}');
  const frag = new URLSearchParams(location.hash.slice(1));
  const s = {
    server: frag.get('server') || saved.server || 'http://127.0.0.1:49999',
    token: frag.get('token') || saved.token || '',
    sandbox: frag.get('sandbox_id') || saved.sandbox || '',
  };
  if (frag.has('token')) history.replaceState(null, '', location.pathname + location.search);
  $('server').value = s.server;
  $('token').value = s.token;
  return s;
}

let settings = loadSettings();

function saveSettings() {
  settings = { ...settings, server: $('server').value.trim().replace(/\/+$/, ''), token: $('token').value };
  sessionStorage.setItem('kbridge-chat', JSON.stringify(settings));
}

// ---------------------------------------------------------------------------------------
// The connection

function connect() {
  if (ws) {
    ws.onclose = null;
    ws.close();
  }
  saveSettings();
  let url;
  try {
    url = new URL('/ws', settings.server);
  } catch {
    setStatus('error', 'bad kbridge URL');
    return;
  }
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (settings.token) url.searchParams.set('token', settings.token);
  if (settings.sandbox) url.searchParams.set('sandbox_id', settings.sandbox);
  setStatus('connecting', 'connecting…');
  const sock = new WebSocket(url, ['kbridge.v1']);
  ws = sock;
  sock.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    ws = null;
    const ended = statusEl.dataset.state === 'ended';
    if (!ended) {
      setStatus('error', ev.code === 1006 && statusEl.dataset.state === 'connecting'
        ? 'could not connect' : `disconnected (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`);
      if (ev.code === 1006)
        notice('kbridge refused or is not running. Check the URL and the token, and that kbridge was ' +
               `started with --allow-origin ${location.origin}`);
    }
    for (const turn of turns.values()) finishTurn(turn, null, 'the connection closed before the cell ended');
  };
}

function onMessage(msg) {
  if (msg.type === 'session') {
    setStatus('ready', `sandbox ${msg.sandbox_id}`);
    return;
  }
  if (msg.type === 'sandbox_ended') {
    setStatus('ended', 'sandbox ended');
    notice(`The sandbox ${msg.sandbox_id} ended (${msg.reason}). Connect again for a new one.`);
    return;
  }
  const turn = turns.get(String(msg.id));
  if (!turn) return;
  const wasNear = nearBottom();
  switch (msg.type) {
    case 'number_of_executions': turn.count = msg.execution_count; break;
    case 'stdout':
    case 'stderr': maybeClear(turn); appendStream(turn, msg.type, msg.text); break;
    case 'result': maybeClear(turn); renderResult(turn, msg); break;
    case 'error': maybeClear(turn); renderError(turn, msg.name, msg.value, msg.traceback); break;
    case 'clear_output':
      if (msg.wait) turn.clearPending = true;
      else clearOutput(turn);
      break;
    case 'end_of_execution': finishTurn(turn, msg.execution); break;
    case 'request_error':
      renderError(turn, msg.code, msg.message, '');
      finishTurn(turn, null, `kbridge refused the request (${msg.code})`);
      break;
    default: break;
  }
  stick(wasNear);
}

// ---------------------------------------------------------------------------------------
// A turn: the user's message, then the assistant's: its code, the output as it streams,
// the Execution's summary at the end.

function run(code) {
  const id = `cell-${nextId++}`;
  const user = el('div', 'turn user');
  user.append(el('div', 'who', 'you'), el('div', 'bubble', code));
  const asst = el('div', 'turn assistant');
  asst.dataset.state = 'running';
  asst.dataset.id = id;
  const bubble = el('div', 'bubble');
  const output = el('div', 'output');
  bubble.append(el('p', 'say', 'Running this in the sandbox:'), el('pre', 'code', code), output);
  asst.append(el('div', 'who', 'assistant'), bubble);
  transcript.append(user, asst);
  const turn = { id, root: asst, bubble, output, open: {}, lines: [], cut: 0, cutEl: null,
                 started: performance.now(), count: null, clearPending: false, done: false };
  turns.set(id, turn);
  ws.send(JSON.stringify({ op: 'execute', id, code }));
  window.scrollTo(0, document.body.scrollHeight);
}

function maybeClear(turn) {
  if (turn.clearPending) clearOutput(turn);
}

function clearOutput(turn) {
  turn.output.replaceChildren();
  turn.open = {};
  turn.lines = [];
  turn.cut = 0;
  turn.cutEl = null;
  turn.clearPending = false;
}

function newLine(turn, stream) {
  const line = el('pre', `line ${stream}`);
  turn.output.append(line);
  turn.lines.push(line);
  if (turn.lines.length > MAX_LINES) {
    const old = turn.lines.shift();
    if (Object.values(turn.open).includes(old)) turn.open = {};
    old.remove();
    turn.cut++;
    if (!turn.cutEl) {
      turn.cutEl = el('div', 'cut');
      turn.output.prepend(turn.cutEl);
    }
    turn.cutEl.textContent = `… ${turn.cut} earlier line${turn.cut === 1 ? '' : 's'} not shown`;
  }
  return line;
}

// Stream text arrives in chunks that need not end at a line break: a line is shown as it
// grows, and the next chunk continues it.
function appendStream(turn, stream, text) {
  let line = turn.open[stream] || null;
  const parts = text.split('\n');
  parts.forEach((part, i) => {
    const last = i === parts.length - 1;
    if (last && part === '') {
      line = null;
      return;
    }
    if (!line) line = newLine(turn, stream);
    let t = line.textContent + part;
    if (t.length > MAX_LINE_CHARS) t = '…' + t.slice(t.length - MAX_LINE_CHARS);
    line.textContent = t;
    if (!last) line = null;
  });
  turn.open[stream] = line;
}

function renderResult(turn, r) {
  turn.open = {};
  let node;
  if (r.png || r.jpeg) {
    node = el('img');
    node.alt = 'an image the code produced';
    node.src = r.png ? `data:image/png;base64,${r.png}` : `data:image/jpeg;base64,${r.jpeg}`;
  } else if (r.svg) {
    // As an image, an SVG's scripts never run.
    node = el('img');
    node.alt = 'an SVG image the code produced';
    node.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(r.svg);
  } else if (r.html) {
    node = el('iframe');
    node.setAttribute('sandbox', '');            // no scripts, no origin, no forms
    node.setAttribute('referrerpolicy', 'no-referrer');
    node.title = 'an HTML result';
    node.srcdoc = r.html;
  } else {
    const text = r.markdown ?? r.latex ?? r.text ?? (r.json !== undefined ? JSON.stringify(r.json, null, 2) : null);
    if (text == null) return;
    node = el('pre', 'result-text', text);
  }
  node.classList.add('result');
  turn.output.append(node);
}

function renderError(turn, name, value, traceback) {
  turn.open = {};
  const box = el('div', 'error');
  box.setAttribute('role', 'alert');
  const head = el('div');
  head.append(el('span', 'ename', name), document.createTextNode(value ? `: ${value}` : ''));
  box.append(head);
  // eslint-disable-next-line no-control-regex
  const tb = (traceback || '').replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').trim();
  if (tb) box.append(el('pre', 'traceback', tb));
  turn.output.append(box);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function finishTurn(turn, execution, failure) {
  if (turn.done) return;
  turn.done = true;
  turns.delete(turn.id);
  const secs = ((performance.now() - turn.started) / 1000).toFixed(2);
  const summary = el('div', 'summary');
  if (execution) {
    const lines = (chunks) => chunks.join('').split('\n').filter((l, i, a) => l !== '' || i < a.length - 1).length;
    const parts = [`Execution ${execution.execution_count ?? turn.count ?? '?'}`, `${secs} s`,
                   plural(lines(execution.logs.stdout), 'stdout line')];
    if (execution.logs.stderr.length) parts.push(plural(lines(execution.logs.stderr), 'stderr line'));
    parts.push(plural(execution.results.length, 'result'));
    parts.push(execution.error ? `failed: ${execution.error.name}` : 'no error');
    if (execution.truncated) parts.push('output truncated in the summary');
    summary.textContent = parts.join(' · ');
    if (execution.error) summary.classList.add('failed');
    turn.root.dataset.state = execution.error ? 'failed' : 'done';
  } else {
    summary.textContent = `Not finished: ${failure} (${secs} s)`;
    summary.classList.add('failed');
    turn.root.dataset.state = 'failed';
  }
  turn.bubble.append(summary);
}

// ---------------------------------------------------------------------------------------

$('connect').addEventListener('submit', (ev) => {
  ev.preventDefault();
  connect();
});
$('preset').addEventListener('change', (ev) => {
  if (PRESETS[ev.target.value]) codeEl.value = PRESETS[ev.target.value];
  codeEl.focus();
});
$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const code = codeEl.value;
  if (!code.trim() || !ws || ws.readyState !== WebSocket.OPEN) return;
  run(code);
});
codeEl.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    $('composer').requestSubmit();
  }
});

if (settings.token || new URLSearchParams(location.search).has('autoconnect')) connect();
