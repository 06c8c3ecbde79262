// The kbridge console: plain JavaScript on kbridge's own APIs (the sandbox REST API, the
// native WebSocket /ws, envd /files, the Jupyter /api, /metrics). No framework, no inline
// script, nothing from another origin. Every string from the server goes into the page as
// text (textContent), never as markup; results' HTML runs in sandboxed frames (frame.html).
import { Terminal } from '/console/xterm.mjs';
import { FitAddon } from '/console/addon-fit.mjs';

const TOKEN_KEY = 'kbridge.token';
// A cell keeps at most this much of one stream's text: a 50 MB output shows its tail and
// says how much was cut, and the page stays responsive.
const STREAM_KEEP = 256 * 1024;
const MAX_ITEMS = 200;

// ---------------------------------------------------------------------------------------
//  Small helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function fmtLeft(endAt) {
  if (!endAt) return '';
  const s = Math.round((Date.parse(endAt) - Date.now()) / 1000);
  if (!(s > 0)) return 'ending';
  const m = Math.floor(s / 60);
  return m ? `${m} min ${s % 60} s` : `${s} s`;
}

function b64encode(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function b64decode(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

const main = () => document.getElementById('main');

function show(...nodes) {
  const m = main();
  m.replaceChildren(...nodes);
}

// ---------------------------------------------------------------------------------------
//  The token: from the fragment the banner prints (#token=...), kept in sessionStorage (this
//  tab only), sent as Authorization: Bearer, and as ?token= on WebSockets (a browser cannot
//  set their headers).

function takeTokenFromFragment() {
  const m = /^#token=([^&]*)/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname + '#/');
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

class Refused extends Error {}

async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({}, extraHeaders || {});
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let payload;
  if (body !== undefined && !(body instanceof Blob) && !(body instanceof ArrayBuffer)) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  } else {
    payload = body;
  }
  const r = await fetch(path, { method, headers, body: payload, cache: 'no-store', credentials: 'omit' });
  if (r.status === 401 || r.status === 403) {
    const text = await r.text();
    // A 403 from a sandbox's own service can be about something else (a path, a user).
    if (r.status === 401 || /token/i.test(text)) throw new Refused(text);
    throw new Error(`${r.status}: ${text}`);
  }
  return r;
}

async function apiJson(method, path, body) {
  const r = await api(method, path, body);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const msg = data && data.message ? data.message : text;
    const e = new Error(`${r.status}: ${msg}`);
    e.status = r.status;
    throw e;
  }
  return data;
}

function tokenPrompt(why) {
  const input = h('input', { type: 'password', id: 'token-input', placeholder: 'the token, or the URL kbridge printed',
    autocomplete: 'off', spellcheck: 'false' });
  const go = () => {
    let v = input.value.trim();
    const m = /#token=([^&\s]*)/.exec(v);
    if (m) v = decodeURIComponent(m[1]);
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    route();
  };
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') go(); });
  show(h('div', { class: 'prompt card', id: 'token-prompt' },
    h('h1', {}, why === 'refused' ? 'The token was refused' : 'This console needs kbridge\'s token'),
    h('p', {}, why === 'refused'
      ? 'kbridge did not accept the token this tab has. Paste the URL it printed when it started (http://HOST:PORT/#token=…), or the token itself.'
      : 'Open the URL kbridge printed when it started (http://HOST:PORT/#token=…), or paste it or the token here. It is kept in this tab only.'),
    input,
    h('button', { class: 'primary', type: 'button', id: 'token-go', onclick: go }, 'Use this token')));
  input.focus();
}

function handleError(e, where) {
  if (e instanceof Refused) {
    tokenPrompt(token() ? 'refused' : 'missing');
    return;
  }
  where.replaceChildren(h('div', { class: 'notice bad' }, String(e.message || e)));
}

// ---------------------------------------------------------------------------------------
//  The native WebSocket: requests with ids, replies and events routed back by id.

const FINAL = {
  execute: (m) => m.type === 'end_of_execution',
  process_start: (m) => m.type === 'process_exit',
  process_connect: (m) => m.type === 'process_exit',
  watch_start: (m) => m.type === 'watch_end',
};

class Native {
  constructor(sandboxId, { onEnded, onClosed }) {
    this.pending = new Map();
    this.nextId = 1;
    this.onEnded = onEnded;
    this.onClosed = onClosed;
    this.ended = false;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ sandbox_id: sandboxId });
    if (token()) q.set('token', token());
    this.ws = new WebSocket(`${proto}//${location.host}/ws?${q}`, 'kbridge.v1');
    this.ready = new Promise((resolve, reject) => {
      this.ws.onmessage = (ev) => {
        let m;
        try { m = JSON.parse(ev.data); } catch { return; }
        if (m.type === 'session') { this.session = m; resolve(m); return; }
        if (m.type === 'sandbox_ended') { this.ended = true; this.onEnded && this.onEnded(m); return; }
        const p = this.pending.get(m.id);
        if (!p) return;
        if (m.type === 'request_error' || (FINAL[p.op] ? FINAL[p.op](m) : true)) this.pending.delete(m.id);
        p.cb(m);
      };
      this.ws.onclose = (ev) => {
        reject(new Error(ev.reason || 'the connection closed'));
        for (const p of this.pending.values()) p.cb({ type: 'request_error', code: 'closed', message: 'the connection closed' });
        this.pending.clear();
        this.onClosed && this.onClosed(ev);
      };
    });
    // A connection refused before its session (a 404, a token) is told through onClosed.
    this.ready.catch(() => {});
  }

  // cb sees every reply and event of the request; the promise resolves with the last one.
  request(op, fields, cb) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, { op, cb: (m) => {
        cb && cb(m);
        if (!this.pending.has(id)) resolve(m);
      } });
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(Object.assign({ op, id }, fields)));
      else this.ready.then(() => this.ws.send(JSON.stringify(Object.assign({ op, id }, fields))),
        () => {});
    });
  }

  // One reply, or an Error carrying the request_error.
  async call(op, fields) {
    const m = await this.request(op, fields);
    if (m.type === 'request_error') {
      const e = new Error(`${m.code}: ${m.message}`);
      e.code = m.code;
      throw e;
    }
    return m;
  }

  close() {
    this.onClosed = null;
    this.ws.close();
  }
}

// ---------------------------------------------------------------------------------------
//  Results' frames: each iframe (sandbox="allow-scripts", no allow-same-origin) loads
//  frame.html, says it is ready, gets its HTML and reports its height.

const frames = new Map();   // contentWindow -> { iframe, html }

window.addEventListener('message', (e) => {
  const f = frames.get(e.source);
  if (!f || !e.data || typeof e.data !== 'object') return;
  if (e.data.kbridgeFrameReady) {
    e.source.postMessage({ kbridgeHtml: f.html }, '*');
  } else if (typeof e.data.kbridgeFrameHeight === 'number') {
    const px = Math.max(20, Math.min(4000, Math.ceil(e.data.kbridgeFrameHeight) + 4));
    f.iframe.style.height = `${px}px`;
  }
});

function resultFrame(html, container) {
  const iframe = h('iframe', { sandbox: 'allow-scripts', src: '/console/frame.html', class: 'result-frame',
    title: 'result', referrerpolicy: 'no-referrer' });
  container.append(iframe);
  frames.set(iframe.contentWindow, { iframe, html });
  return iframe;
}

function forgetFrames(root) {
  for (const f of root.querySelectorAll('iframe')) frames.delete(f.contentWindow);
}

// ---------------------------------------------------------------------------------------
//  A cell's output: streams (bounded, tail kept), results by MIME type, errors.

class Output {
  constructor(el) {
    this.el = el;
    this.last = null;       // the stream block being appended to
    this.displays = new Map();
    this.clearPending = false;
    this.dirty = new Set();
  }

  clear() {
    forgetFrames(this.el);
    this.el.replaceChildren();
    this.last = null;
    this.displays.clear();
  }

  prepare() {
    if (this.clearPending) { this.clearPending = false; this.clear(); }
    while (this.el.childElementCount >= MAX_ITEMS) {
      const first = this.el.firstElementChild;
      forgetFrames(first);
      first.remove();
      if (!this.el.querySelector('.items-cut')) this.el.prepend(h('div', { class: 'cut items-cut' }, 'Earlier outputs were cut.'));
    }
  }

  stream(name, text) {
    this.prepare();
    if (!this.last || this.last.name !== name || !this.last.pre.isConnected) {
      const cut = h('div', { class: 'cut', hidden: true });
      const pre = h('pre', { class: name });
      this.el.append(h('div', { class: 'stream' }, cut, pre));
      this.last = { name, pre, cut, text: '', cutBytes: 0 };
    }
    const s = this.last;
    s.text += text;
    if (s.text.length > STREAM_KEEP) {
      const drop = s.text.length - STREAM_KEEP;
      s.cutBytes += drop;
      s.text = s.text.slice(drop);
    }
    this.dirty.add(s);
    // Many events a frame become one DOM update.
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    for (const s of this.dirty) {
      s.pre.textContent = s.text;
      if (s.cutBytes) {
        s.cut.hidden = false;
        s.cut.textContent = `… ${fmtBytes(s.cutBytes)} of output cut: showing the last ${fmtBytes(s.text.length)}`;
      }
    }
    this.dirty.clear();
  }

  result(r) {
    this.prepare();
    this.last = null;
    const box = h('div', { class: 'result' });
    // In the page first: a frame has its window (which its messages are checked against)
    // only once attached.
    if (r.display_id && r.update && this.displays.has(r.display_id)) {
      const old = this.displays.get(r.display_id);
      forgetFrames(old);
      old.replaceWith(box);
    } else {
      this.el.append(box);
    }
    if (r.display_id) this.displays.set(r.display_id, box);
    if (r.html !== undefined) resultFrame(r.html, box);
    else if (r.javascript !== undefined) resultFrame(`<script>${r.javascript.replace(/<\/script/gi, '<\\/script')}</script>`, box);
    else if (r.png !== undefined) box.append(h('img', { src: `data:image/png;base64,${r.png}`, alt: r.text || 'image' }));
    else if (r.jpeg !== undefined) box.append(h('img', { src: `data:image/jpeg;base64,${r.jpeg}`, alt: r.text || 'image' }));
    // An SVG as an image: its scripts do not run there.
    else if (r.svg !== undefined) box.append(h('img', { src: `data:image/svg+xml;base64,${b64encode(new TextEncoder().encode(r.svg))}`, alt: 'svg' }));
    else if (r.markdown !== undefined) box.append(h('pre', { class: 'markdown' }, r.markdown));
    else if (r.latex !== undefined) box.append(h('pre', { class: 'latex' }, r.latex));
    else if (r.json !== undefined) box.append(h('pre', { class: 'json' }, JSON.stringify(r.json, null, 2)));
    else if (r.text !== undefined) box.append(h('pre', { class: 'text' }, r.text));
    else box.append(h('pre', { class: 'muted' }, `(${Object.keys(r.extra || {}).join(', ') || 'empty result'})`));
  }

  error(err) {
    this.prepare();
    this.last = null;
    this.el.append(h('div', { class: 'error' },
      h('span', { class: 'ename' }, err.name || 'Error'), err.value ? `: ${err.value}` : '',
      err.traceback ? h('pre', { class: 'traceback' }, err.traceback) : null));
  }

  event(m) {
    switch (m.type) {
    case 'stdout': case 'stderr': this.stream(m.type, m.text); break;
    case 'result': this.result(m); break;
    case 'error': this.error(m); this.hadError = true; break;
    case 'clear_output': if (m.wait) this.clearPending = true; else this.clear(); break;
    default: break;
    }
  }
}

// ---------------------------------------------------------------------------------------
//  Pages

let current = null;   // the page shown: { destroy() }

function leave() {
  if (current && current.destroy) current.destroy();
  current = null;
}

async function route() {
  leave();
  document.getElementById('forget').hidden = !token();
  const hash = location.hash || '#/';
  let m;
  if ((m = /^#\/sandbox\/([^/]+)$/.exec(hash))) return sandboxPage(decodeURIComponent(m[1]));
  if (hash === '#/status') return statusPage();
  return listPage();
}

// --- the sandboxes ---------------------------------------------------------------------

function listPage() {
  const body = h('tbody', { id: 'sandbox-rows' });
  const kernels = h('tbody', { id: 'default-kernels' });
  const msg = h('div');
  const template = h('input', { id: 'new-template', value: 'base', size: 14 });
  const metadata = h('input', { id: 'new-metadata', placeholder: 'key=value, key=value', size: 24 });
  const timeout = h('input', { id: 'new-timeout', type: 'number', value: 300, min: 1, size: 6 });
  const create = h('button', { class: 'primary', id: 'create-sandbox', type: 'button' }, 'Create sandbox');
  create.addEventListener('click', async () => {
    const md = {};
    for (const kv of metadata.value.split(',')) {
      const [k, ...v] = kv.split('=');
      if (k.trim()) md[k.trim()] = v.join('=').trim();
    }
    create.disabled = true;
    msg.replaceChildren(h('p', { class: 'muted' }, 'Starting a sandbox…'));
    try {
      const sb = await apiJson('POST', '/sandboxes', { templateID: template.value.trim() || 'base',
        timeout: Number(timeout.value) || 300, metadata: md });
      msg.replaceChildren();
      location.hash = `#/sandbox/${encodeURIComponent(sb.sandboxID)}`;
    } catch (e) {
      handleError(e, msg);
    } finally {
      create.disabled = false;
    }
  });

  show(h('h1', {}, 'Sandboxes'),
    h('div', { class: 'row' }, 'Template', template, 'Metadata', metadata, 'Timeout (s)', timeout, create),
    msg,
    h('table', { class: 'grid', id: 'sandboxes' },
      h('thead', {}, h('tr', {}, ['Id', 'Template', 'Metadata', 'State', 'Time left', ''].map((t) => h('th', {}, t)))),
      body),
    h('h2', {}, 'The default sandbox'),
    h('p', { class: 'muted' }, 'Where Jupyter and E2B clients\' kernels run. ',
      h('a', { href: '#/sandbox/default', id: 'open-default' }, 'Open it')),
    h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ['Kernel', 'Name', 'State', 'Connections', ''].map((t) => h('th', {}, t)))),
      kernels));

  let sandboxes = [];
  const paint = () => {
    body.replaceChildren(...(sandboxes.length ? sandboxes.map((sb) => {
      const id = sb.sandboxID;
      const act = (label, cls, fn) => h('button', { type: 'button', class: cls, 'data-action': label.toLowerCase(),
        onclick: async (e) => {
          e.target.disabled = true;
          try { await fn(); } catch (err) { handleError(err, msg); }
          refresh();
        } }, label);
      return h('tr', { 'data-sandbox': id },
        h('td', {}, h('a', { href: `#/sandbox/${encodeURIComponent(id)}`, class: 'mono' }, id)),
        h('td', {}, sb.templateID || sb.alias || ''),
        h('td', { class: 'mono' }, Object.entries(sb.metadata || {}).map(([k, v]) => `${k}=${v}`).join(', ')),
        h('td', { class: 'state' }, sb.state || ''),
        h('td', { class: 'left' }, sb.state === 'paused' ? 'paused' : fmtLeft(sb.endAt)),
        h('td', {},
          sb.state === 'paused'
            ? act('Resume', '', () => apiJson('POST', `/sandboxes/${id}/connect`, { timeout: 300 }))
            : act('Pause', '', () => apiJson('POST', `/sandboxes/${id}/pause`)),
          ' ',
          act('Timeout', '', async () => {
            const s = prompt('Seconds from now until this sandbox ends', '600');
            if (s) await apiJson('POST', `/sandboxes/${id}/timeout`, { timeout: Number(s) });
          }),
          ' ',
          act('Kill', 'danger', () => apiJson('DELETE', `/sandboxes/${id}`))));
    }) : [h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No sandboxes. Create one above.'))]));
  };
  const refresh = async () => {
    try {
      const list = await apiJson('GET', '/sandboxes');
      sandboxes = Array.isArray(list) ? list : [];
      paint();
      const ks = await apiJson('GET', '/api/kernels');
      kernels.replaceChildren(...(ks.length ? ks.map((k) => h('tr', {},
        h('td', { class: 'mono' }, k.id), h('td', {}, k.name), h('td', {}, k.execution_state),
        h('td', {}, String(k.connections ?? '')),
        h('td', {}, h('button', { type: 'button', class: 'danger', onclick: async () => {
          try { await apiJson('DELETE', `/api/kernels/${k.id}`); } catch (e) { handleError(e, msg); }
          refresh();
        } }, 'Shut down')))) : [h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No kernels.'))]));
    } catch (e) {
      handleError(e, msg);
      if (e instanceof Refused) stop();
    }
  };
  const timer = setInterval(refresh, 3000);
  const tick = setInterval(() => {
    for (const tr of body.querySelectorAll('tr[data-sandbox]')) {
      const sb = sandboxes.find((s) => s.sandboxID === tr.dataset.sandbox);
      if (sb && sb.state !== 'paused') tr.querySelector('.left').textContent = fmtLeft(sb.endAt);
    }
  }, 1000);
  const stop = () => { clearInterval(timer); clearInterval(tick); };
  current = { destroy: stop };
  refresh();
}

// --- one sandbox -----------------------------------------------------------------------

async function sandboxPage(id) {
  const banner = h('div', { id: 'sandbox-banner' });
  const info = h('div', { class: 'muted', id: 'sandbox-info' });
  const panes = {};
  const tabs = h('div', { class: 'tabs' });
  const content = h('div');
  const names = ['Notebook', 'Files', 'Terminal', 'Processes', 'Ports'];
  for (const n of names) {
    panes[n] = h('div', { class: 'pane', id: `pane-${n.toLowerCase()}`, hidden: n !== 'Notebook' });
    content.append(panes[n]);
    tabs.append(h('button', { type: 'button', id: `tab-${n.toLowerCase()}`, class: n === 'Notebook' ? 'on' : '',
      onclick: (e) => {
        for (const b of tabs.children) b.classList.toggle('on', b === e.target);
        for (const p of Object.keys(panes)) panes[p].hidden = p !== n;
        onTab[n] && onTab[n]();
      } }, n));
  }
  const killBtn = id === 'default' ? null : h('button', { type: 'button', class: 'danger', id: 'kill-sandbox' }, 'Kill sandbox');
  show(h('h1', {}, 'Sandbox ', h('span', { class: 'mono' }, id)), info, banner,
    h('div', { class: 'row' }, h('a', { href: '#/' }, '← all sandboxes'), killBtn), tabs, content);

  const state = { ended: false, destroyers: [] };
  const ended = (why) => {
    if (state.ended) return;
    state.ended = true;
    banner.replaceChildren(h('div', { class: 'notice bad', id: 'sandbox-ended' }, why));
    for (const el of content.querySelectorAll('button, textarea, input, select')) el.disabled = true;
    if (killBtn) killBtn.disabled = true;
  };

  if (id !== 'default') {
    try {
      const sb = await apiJson('GET', `/sandboxes/${encodeURIComponent(id)}`);
      info.textContent = `template ${sb.templateID || ''} · state ${sb.state} · ends ${sb.endAt ? new Date(sb.endAt).toLocaleString() : 'never'}`;
      if (sb.state === 'paused') banner.replaceChildren(h('div', { class: 'notice' }, 'This sandbox is paused: resume it from the list to run code in it.'));
    } catch (e) {
      if (e instanceof Refused) { tokenPrompt(token() ? 'refused' : 'missing'); return; }
      if (e.status === 404) { ended(`This sandbox does not exist (it ended, or was never made).`); return; }
      handleError(e, banner);
      return;
    }
  } else {
    info.textContent = 'The default sandbox: shared with Jupyter and E2B clients; it never ends.';
  }

  const native = new Native(id, {
    onEnded: (m) => ended(`This sandbox ended (${m.reason || 'ended'}).`),
    onClosed: (ev) => {
      if (!state.ended) ended(`The connection to kbridge closed${ev.reason ? ` (${ev.reason})` : ''}: reload to reconnect.`);
    },
  });
  current = { destroy: () => { for (const d of state.destroyers) d(); native.close(); forgetFrames(content); } };

  if (killBtn) killBtn.addEventListener('click', async () => {
    if (!confirm(`Kill sandbox ${id}? Its processes, kernels and files go.`)) return;
    killBtn.disabled = true;
    try { await apiJson('DELETE', `/sandboxes/${encodeURIComponent(id)}`); } catch (e) { handleError(e, banner); }
  });

  const onTab = {};
  notebook(panes.Notebook, native, state);
  onTab.Files = files(panes.Files, native, id, state);
  onTab.Terminal = terminal(panes.Terminal, native, state);
  onTab.Processes = processes(panes.Processes, native);
  onTab.Ports = ports(panes.Ports, native, id);
}

function notebook(pane, native, state) {
  const picker = h('select', { id: 'kernel-picker' });
  const cells = h('div', { id: 'cells' });
  const kernels = new Map();   // kernel name -> Promise(kernel_id)
  const kernelFor = (name) => {
    if (!kernels.has(name)) {
      const p = native.call('start_kernel', { kernel_name: name }).then((m) => m.kernel.kernel_id);
      p.catch(() => kernels.delete(name));
      kernels.set(name, p);
    }
    return kernels.get(name);
  };
  const control = async (op, stateEl) => {
    const name = picker.value;
    if (!kernels.has(name)) return;
    stateEl.textContent = op === 'restart_kernel' ? 'restarting…' : 'interrupting…';
    try {
      await native.call(op, { kernel_id: await kernels.get(name) });
      stateEl.textContent = op === 'restart_kernel' ? 'restarted' : 'interrupted';
    } catch (e) { stateEl.textContent = e.message; }
  };
  const kstate = h('span', { class: 'state', id: 'kernel-state' });
  pane.append(h('div', { class: 'row' }, 'Language', picker,
    h('button', { type: 'button', id: 'interrupt', onclick: () => control('interrupt_kernel', kstate) }, 'Interrupt'),
    h('button', { type: 'button', id: 'restart', onclick: () => control('restart_kernel', kstate) }, 'Restart'),
    kstate), cells);

  apiJson('GET', '/api/kernelspecs').then((ks) => {
    const specs = Object.entries(ks.kernelspecs || {});
    picker.replaceChildren(...specs.map(([name, s]) => h('option', { value: name, selected: name === ks.default },
      `${(s.spec && s.spec.display_name) || name}`)));
  }).catch((e) => handleError(e, kstate));

  const addCell = () => {
    const code = h('textarea', { class: 'code', spellcheck: 'false', placeholder: 'Code; Shift+Enter runs it' });
    const count = h('div', { class: 'count' }, '[ ]');
    const run = h('button', { type: 'button', class: 'primary run' }, 'Run');
    const st = h('div', { class: 'state' });
    const out = h('div', { class: 'output' });
    const cell = h('div', { class: 'cell' }, h('div', { class: 'input' }, count, code, h('div', { class: 'tools' }, run, st)), out);
    cells.append(cell);
    // The box grows with the code (up to 30 lines; then it scrolls).
    const fitRows = () => { code.rows = Math.min(30, Math.max(3, code.value.split('\n').length)); };
    code.addEventListener('input', fitRows);
    fitRows();
    const exec = async () => {
      if (state.ended || run.disabled) return;
      if (cell === cells.lastElementChild) addCell();
      const output = new Output(out);
      output.clear();
      run.disabled = true;
      cell.dataset.state = 'running';
      st.textContent = 'starting kernel…';
      let end;
      try {
        const kid = await kernelFor(picker.value || 'python3');
        st.textContent = 'running…';
        const t0 = performance.now();
        end = await native.request('execute', { code: code.value, kernel_id: kid }, (m) => {
          if (m.type === 'number_of_executions') count.textContent = `[${m.execution_count}]`;
          output.event(m);
        });
        output.flush();
        if (end.type === 'request_error') {
          output.error({ name: end.code, value: end.message });
          st.textContent = 'failed';
        } else {
          const x = end.execution || {};
          if (x.error && !output.hadError) output.error(x.error);
          if (x.execution_count) count.textContent = `[${x.execution_count}]`;
          st.textContent = `${x.error ? 'error' : 'done'} · ${Math.round(performance.now() - t0)} ms`;
        }
      } catch (e) {
        output.error({ name: e.code || 'Error', value: e.message });
        st.textContent = 'failed';
      } finally {
        run.disabled = state.ended;
        cell.dataset.state = 'done';
      }
    };
    run.addEventListener('click', exec);
    code.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && e.shiftKey) { e.preventDefault(); exec(); }
    });
    if (state.ended) { code.disabled = true; run.disabled = true; }
    return cell;
  };
  addCell();
}

function files(pane, native, sandboxId, state) {
  const cwd = h('input', { id: 'files-path', value: sandboxId === 'default' ? '/tmp' : '/home/user', size: 40 });
  const rows = h('tbody', { id: 'files-rows' });
  const msg = h('div');
  const upload = h('input', { type: 'file', id: 'upload', multiple: true });
  const envdHeaders = { 'E2b-Sandbox-Id': sandboxId, 'E2b-Sandbox-Port': '49983' };
  const join = (dir, name) => (dir.endsWith('/') ? dir : `${dir}/`) + name;
  const list = async () => {
    msg.replaceChildren();
    try {
      const r = await native.call('files_list', { path: cwd.value });
      const entries = r.entries.slice().sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type === 'dir' ? -1 : 1));
      rows.replaceChildren(
        h('tr', {}, h('td', { class: 'name', onclick: () => { cwd.value = cwd.value.replace(/\/[^/]+\/?$/, '') || '/'; list(); } }, '..'),
          h('td', {}), h('td', {}), h('td', {})),
        ...entries.map((e) => h('tr', { 'data-name': e.name },
          h('td', { class: 'name', onclick: () => { if (e.type === 'dir') { cwd.value = e.path; list(); } } },
            e.type === 'dir' ? `${e.name}/` : e.name),
          h('td', {}, e.type === 'dir' ? '' : fmtBytes(e.size)),
          h('td', { class: 'mono' }, e.permissions || ''),
          h('td', {},
            e.type === 'dir' ? null : h('button', { type: 'button', class: 'download', onclick: () => download(e) }, 'Download'),
            ' ',
            h('button', { type: 'button', class: 'danger', onclick: async () => {
              if (!confirm(`Delete ${e.path}?`)) return;
              try { await native.call('files_remove', { path: e.path }); } catch (err) { handleError(err, msg); }
              list();
            } }, 'Delete')))));
    } catch (e) { handleError(e, msg); }
  };
  const download = async (e) => {
    try {
      const q = new URLSearchParams({ path: e.path, username: 'root' });
      const r = await api('GET', `/files?${q}`, undefined, envdHeaders);
      if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
      const url = URL.createObjectURL(await r.blob());
      const a = h('a', { href: url, download: e.name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) { handleError(err, msg); }
  };
  upload.addEventListener('change', async () => {
    for (const f of upload.files) {
      msg.replaceChildren(h('p', { class: 'muted' }, `Uploading ${f.name} (${fmtBytes(f.size)})…`));
      try {
        const q = new URLSearchParams({ path: join(cwd.value, f.name), username: 'root' });
        const r = await api('POST', `/files?${q}`, f, Object.assign({ 'Content-Type': 'application/octet-stream' }, envdHeaders));
        if (!r.ok) throw new Error(`upload of ${f.name}: ${r.status}: ${await r.text()}`);
      } catch (e) { handleError(e, msg); return; }
    }
    msg.replaceChildren();
    upload.value = '';
    list();
  });
  const mkdir = async () => {
    const name = prompt('New folder name');
    if (!name) return;
    try { await native.call('files_make_dir', { path: join(cwd.value, name), parents: true }); } catch (e) { handleError(e, msg); }
    list();
  };
  cwd.addEventListener('keydown', (e) => { if (e.key === 'Enter') list(); });
  pane.append(h('div', { class: 'row' }, 'Path', cwd, h('button', { type: 'button', id: 'files-refresh', onclick: list }, 'List'),
    h('button', { type: 'button', id: 'files-mkdir', onclick: mkdir }, 'New folder'), h('label', {}, 'Upload ', upload)),
  msg, h('table', { class: 'grid files' },
    h('thead', {}, h('tr', {}, ['Name', 'Size', 'Mode', ''].map((t) => h('th', {}, t)))), rows));
  let listed = false;
  return () => { if (!listed && !state.ended) { listed = true; list(); } };
}

function terminal(pane, native, state) {
  const box = h('div', { id: 'terminal' });
  const msg = h('div', { class: 'muted', id: 'terminal-state' });
  pane.append(msg, box);
  let started = false;
  return () => {
    if (started || state.ended) return;
    started = true;
    const term = new Terminal({ fontSize: 13, fontFamily: 'DejaVu Sans Mono, monospace', convertEol: false, scrollback: 2000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    window.__kbridgeTerminal = term;   // the browser tests read the screen through it
    let pid = null;
    const enc = new TextEncoder();
    native.request('process_start', { args: ['/bin/bash', '-l', '-i'], pty: { cols: term.cols, rows: term.rows },
      env_vars: { TERM: 'xterm-256color' }, encoding: 'base64', tag: `console-terminal-${Date.now()}` }, (m) => {
      if (m.type === 'process_started') { pid = m.process.pid; msg.textContent = `bash, pid ${pid}`; }
      else if (m.type === 'process_pty' || m.type === 'process_stdout' || m.type === 'process_stderr') {
        if (m.data) term.write(b64decode(m.data)); else if (m.text) term.write(m.text);
      } else if (m.type === 'process_exit') { msg.textContent = `the shell ended (${m.status || 'exited'})`; pid = null; }
      else if (m.type === 'request_error') msg.textContent = `${m.code}: ${m.message}`;
    });
    term.onData((d) => { if (pid !== null) native.request('process_input', { pid, data: b64encode(enc.encode(d)) }); });
    const resize = () => {
      if (pane.hidden) return;
      fit.fit();
      if (pid !== null) native.request('process_resize', { pid, cols: term.cols, rows: term.rows });
    };
    window.addEventListener('resize', resize);
    state.destroyers.push(() => {
      window.removeEventListener('resize', resize);
      if (pid !== null) native.request('process_signal', { pid, signal: 'SIGHUP' });
      term.dispose();
    });
    term.focus();
  };
}

function processes(pane, native) {
  const rows = h('tbody', { id: 'process-rows' });
  const out = h('pre', { id: 'process-output', class: 'mono' });
  const msg = h('div');
  let watching = null;
  const list = async () => {
    try {
      const r = await native.call('process_list', {});
      rows.replaceChildren(...(r.processes.length ? r.processes.map((p) => h('tr', {},
        h('td', { class: 'mono' }, String(p.pid)), h('td', {}, p.tag || ''),
        h('td', { class: 'mono' }, p.cmd || (p.args || []).join(' ')),
        h('td', {},
          h('button', { type: 'button', onclick: () => connect(p) }, 'Output'), ' ',
          h('button', { type: 'button', class: 'danger', onclick: async () => {
            try { await native.call('process_signal', { pid: p.pid, signal: 'SIGKILL' }); } catch (e) { handleError(e, msg); }
            setTimeout(list, 300);
          } }, 'Kill')))) : [h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No processes running.'))]));
    } catch (e) { handleError(e, msg); }
  };
  const connect = (p) => {
    watching = p.pid;
    let text = '';
    out.textContent = '';
    native.request('process_connect', { pid: p.pid }, (m) => {
      if (watching !== p.pid) return;
      if (m.text) {
        text = (text + m.text).slice(-STREAM_KEEP);
        out.textContent = text;
      } else if (m.type === 'process_exit') out.textContent = `${text}\n[${m.status}]`;
    });
  };
  pane.append(h('div', { class: 'row' }, h('button', { type: 'button', onclick: list }, 'Refresh')), msg,
    h('table', { class: 'grid' }, h('thead', {}, h('tr', {}, ['Pid', 'Tag', 'Command', ''].map((t) => h('th', {}, t)))), rows),
    h('h2', {}, 'Output'), out);
  return list;
}

function ports(pane, native, id) {
  const rows = h('ul', { id: 'port-links' });
  const msg = h('div');
  // The sandbox's listening sockets, from its own /proc (its network namespace).
  const list = async () => {
    try {
      const seen = new Set();
      for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
        let r;
        try { r = await native.call('files_read', { path: f }); } catch { continue; }
        for (const line of (r.text || '').split('\n').slice(1)) {
          const cols = line.trim().split(/\s+/);
          if (cols.length > 3 && cols[3] === '0A') seen.add(parseInt(cols[1].split(':').pop(), 16));
        }
      }
      const list2 = [...seen].filter((p) => p !== 49983 && p !== 49999).sort((a, b) => a - b);
      const t = token();
      rows.replaceChildren(...(list2.length ? list2.map((p) => h('li', {},
        h('a', { href: `/sandboxes/${encodeURIComponent(id)}/ports/${p}/${t ? `?token=${encodeURIComponent(t)}` : ''}`,
          target: '_blank', rel: 'noopener noreferrer' }, `port ${p}`))) : [h('li', { class: 'muted' }, 'Nothing is listening.')]));
    } catch (e) { handleError(e, msg); }
  };
  pane.append(h('p', { class: 'muted' }, 'Servers listening in this sandbox, through kbridge\'s port proxy.'),
    h('div', { class: 'row' }, h('button', { type: 'button', onclick: list }, 'Refresh')), msg, rows);
  return list;
}

// --- status ----------------------------------------------------------------------------

// The Prometheus text format: `name{label="v",...} value` lines; # HELP / # TYPE comments.
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function statusPage() {
  const st = h('div', { id: 'api-status' });
  const met = h('div', { id: 'metrics' });
  show(h('h1', {}, 'Status'), h('h2', {}, 'Server (/api/status)'), st, h('h2', {}, 'Metrics (/metrics)'), met);
  const refresh = async () => {
    try {
      const s = await apiJson('GET', '/api/status');
      st.replaceChildren(h('table', { class: 'kv' }, ...Object.entries(s).map(([k, v]) =>
        h('tr', {}, h('td', {}, k), h('td', { class: 'mono' }, typeof v === 'object' ? JSON.stringify(v) : String(v))))));
    } catch (e) { handleError(e, st); if (e instanceof Refused) return stop(); }
    try {
      const r = await api('GET', '/metrics');
      if (r.status === 404) { met.replaceChildren(h('p', { class: 'muted', id: 'metrics-na' }, 'Metrics: not available (this kbridge serves no /metrics).')); return; }
      if (!r.ok) throw new Error(`/metrics: ${r.status}`);
      // Histogram buckets are many lines of one figure: the table shows their _sum and _count.
      const rows = parseMetrics(await r.text()).filter((x) => !x.name.endsWith('_bucket'));
      met.replaceChildren(h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Metric'), h('th', {}, 'Labels'), h('th', {}, 'Value'))),
        h('tbody', {}, ...rows.map((x) => h('tr', { 'data-metric': x.name }, h('td', { class: 'mono' }, x.name),
          h('td', { class: 'mono' }, Object.entries(x.labels).map(([k, v]) => `${k}=${v}`).join(', ')),
          h('td', { class: 'mono' }, String(x.value)))))));
    } catch (e) { handleError(e, met); }
  };
  const timer = setInterval(refresh, 5000);
  const stop = () => clearInterval(timer);
  current = { destroy: stop };
  refresh();
}

// ---------------------------------------------------------------------------------------

function start() {
  takeTokenFromFragment();
  document.getElementById('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = '#/';
    route();
  });
  window.addEventListener('hashchange', () => {
    takeTokenFromFragment();
    route();
  });
  route();
}

start();
