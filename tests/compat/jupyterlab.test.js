'use strict';
// Compatibility suite: drives a running kbridge with the real JupyterLab client library
// (@jupyterlab/services, pinned in package.json) exactly as JupyterLab would drive
// Jupyter Server. Every test that needs a kernel starts (and shuts down) its own, so the
// tests are independent of each other and of their order. The same suite passes against
// Jupyter Server 1.23.3 (KBRIDGE_URL pointing at it), which is what "correct" means here.
//
//   cd tests/compat && KBRIDGE_URL=http://127.0.0.1:PORT/ KBRIDGE_TOKEN=T node --test --test-force-exit
//
// --test-force-exit: @lumino/polling's Poll.dispose() leaves its next tick's timer armed, so
// without it node waits up to 61 s (the KernelSpecManager poll interval) after the last test.
// tests/integration/test_compat_jupyterlab.py starts kbridge and runs this file.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const WS = require('ws');
const {
  ServerConnection,
  KernelManager,
  KernelAPI,
  KernelSpecManager,
  KernelSpecAPI,
  SessionManager,
  SessionAPI
} = require('@jupyterlab/services');

const BASE_URL = process.env.KBRIDGE_URL;
const TOKEN = process.env.KBRIDGE_TOKEN ?? '';
if (!BASE_URL) {
  throw new Error('KBRIDGE_URL is not set (e.g. KBRIDGE_URL=http://127.0.0.1:PORT/ KBRIDGE_TOKEN=T)');
}

const V1 = 'v1.kernel.websocket.jupyter.org';
const TEST_TIMEOUT = 90_000;
const STEP = 30_000; // upper bound for any single step that should take well under a second
const EXECUTION_STATES = ['starting', 'idle', 'busy', 'restarting', 'dead'];

// ---------------------------------------------------------------------------------------
// helpers

/**
 * Server settings for the client library. If `http` (an array) is given, every REST call the
 * library makes is recorded there as {method, path, status}.
 */
function makeSettings(extra = {}, http = null) {
  const recordingFetch = async request => {
    const response = await globalThis.fetch(request);
    if (http) http.push({ method: request.method, path: new URL(request.url).pathname, status: response.status });
    return response;
  };
  return ServerConnection.makeSettings({
    baseUrl: BASE_URL,
    wsUrl: BASE_URL.replace(/^http/, 'ws'),
    token: TOKEN,
    fetch: recordingFetch,
    ...extra
  });
}

/** Status codes of the recorded REST calls matching method and path. */
function statuses(http, method, path) {
  return http.filter(r => r.method === method && r.path === path).map(r => r.status);
}

/**
 * A WebSocket class (for serverSettings.WebSocket) that records what it offered, what the
 * server selected and the kind of every frame received. With legacy=true it drops the
 * offered subprotocols, which forces the legacy JSON protocol.
 */
function recordingWebSocket(sockets, { legacy = false } = {}) {
  return class RecordingWebSocket extends WS {
    constructor(url, protocols, options) {
      const offered = protocols === undefined ? [] : [].concat(protocols);
      super(url, legacy ? [] : offered, options);
      const entry = { url, offered, protocol: null, binaryIn: 0, textIn: 0 };
      sockets.push(entry);
      this.on('open', () => {
        entry.protocol = this.protocol;
      });
      this.on('message', (data, isBinary) => {
        if (isBinary) entry.binaryIn += 1;
        else entry.textIn += 1;
      });
    }
  };
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function waitFor(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise(r => setTimeout(r, 20));
  }
}

function kernelPath(id, action) {
  return new URL(`api/kernels/${id}${action ? `/${action}` : ''}`, BASE_URL).pathname;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function rawGet(path) {
  const url = new URL(path, BASE_URL);
  const response = await fetch(url, { headers: { Authorization: `token ${TOKEN}` } });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

async function shutdownQuietly(id, serverSettings) {
  try {
    if (await KernelAPI.getKernelModel(id, serverSettings)) {
      await KernelAPI.shutdownKernel(id, serverSettings);
    }
  } catch {
    // best effort: the test itself reports what went wrong
  }
}

/**
 * Start a kernel with KernelManager.startNew and wait until kernel.info resolves.
 * Registers cleanup (shutdown + dispose) with t.after (t: a test context, or anything
 * with an after(fn) method).
 */
async function startKernel(t, settingsExtra = {}) {
  const http = [];
  const serverSettings = makeSettings(settingsExtra, http);
  const manager = new KernelManager({ serverSettings });
  let kernel = null;
  t.after(async () => {
    if (kernel) {
      try {
        if (!kernel.isDisposed && kernel.status !== 'dead') await kernel.shutdown();
      } catch {
        // fall through to the REST check below
      }
      await shutdownQuietly(kernel.id, serverSettings);
    }
    manager.dispose();
  });
  await withTimeout(manager.ready, STEP, 'KernelManager.ready');
  kernel = await withTimeout(manager.startNew({ name: 'python3' }), 60_000, 'KernelManager.startNew');
  const info = await withTimeout(kernel.info, 60_000, 'kernel.info after startNew');
  return { manager, kernel, info, serverSettings, http };
}

/** Run code through kernel.requestExecute; returns the reply and every iopub message of the future. */
async function execute(kernel, code, options = {}, onStdin) {
  const iopub = [];
  const stdin = [];
  let gotReply = false;
  const future = kernel.requestExecute({ code, ...options });
  future.onIOPub = msg => {
    iopub.push(msg);
  };
  future.onReply = () => {
    gotReply = true;
  };
  future.onStdin = msg => {
    stdin.push(msg);
    if (onStdin) onStdin(msg, future);
  };
  let reply;
  try {
    reply = await withTimeout(future.done, STEP, `execute ${JSON.stringify(code)}`);
  } catch (error) {
    // say how far the request got
    error.message +=
      ` (iopub so far: [${types(iopub).join(', ')}]; stdin so far: [${stdin.map(m => m.header.msg_type).join(', ')}];` +
      ` reply received: ${gotReply}; kernel status ${kernel.status}, connection ${kernel.connectionStatus})`;
    throw error;
  }
  return { reply, iopub, stdin, request: future.msg };
}

function types(messages) {
  return messages.map(m =>
    m.header.msg_type === 'status' ? `status:${m.content.execution_state}` : m.header.msg_type
  );
}

function bytesOf(view) {
  if (view instanceof ArrayBuffer) return Buffer.from(view);
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

// ---------------------------------------------------------------------------------------
// kernel start + info

test('KernelManager.startNew starts a kernel and kernel.info resolves', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel, info, serverSettings, http } = await startKernel(t);

  assert.deepEqual(statuses(http, 'POST', new URL('api/kernels', BASE_URL).pathname), [201], 'POST /api/kernels');
  assert.match(kernel.id, /^\w+-\w+-\w+-\w+-\w+$/, 'kernel id looks like a UUID');
  assert.equal(kernel.name, 'python3');
  assert.equal(kernel.connectionStatus, 'connected');

  assert.equal(info.status, 'ok');
  assert.equal(info.implementation, 'ipython');
  assert.equal(info.language_info.name, 'python');
  assert.match(info.protocol_version, /^5\.\d+$/);
  assert.equal(typeof info.banner, 'string');

  // the REST model of the started kernel
  const model = await KernelAPI.getKernelModel(kernel.id, serverSettings);
  assert.ok(model, 'GET /api/kernels/{id} finds the new kernel');
  assert.equal(model.id, kernel.id);
  assert.equal(model.name, 'python3');

  // kernel_info_request made explicitly also works (resolves to the whole reply message)
  const reply = await withTimeout(kernel.requestKernelInfo(), STEP, 'requestKernelInfo');
  assert.equal(reply.header.msg_type, 'kernel_info_reply');
  assert.equal(reply.channel, 'shell');
  assert.equal(reply.content.status, 'ok');
  assert.equal(reply.content.language_info.name, 'python');
});

// ---------------------------------------------------------------------------------------
// execute (both WebSocket protocols)

const EXECUTE_CODE = [
  "print('hello from kbridge')",
  'from IPython.display import display, HTML',
  "display(HTML('<b>bold</b>'))",
  '6 * 7'
].join('\n');

for (const mode of ['v1', 'legacy']) {
  test(`execute: stream, display_data, execute_result and execute_reply (${mode} protocol)`, { timeout: TEST_TIMEOUT }, async t => {
    const sockets = [];
    const WebSocket = recordingWebSocket(sockets, { legacy: mode === 'legacy' });
    const { kernel } = await startKernel(t, { WebSocket });

    const { reply, iopub, request } = await execute(kernel, EXECUTE_CODE);

    assert.deepEqual(types(iopub), [
      'status:busy',
      'execute_input',
      'stream',
      'display_data',
      'execute_result',
      'status:idle'
    ]);
    for (const msg of iopub) {
      assert.equal(msg.channel, 'iopub');
      assert.equal(msg.parent_header.msg_id, request.header.msg_id, `${msg.header.msg_type} parent`);
      for (const field of ['msg_id', 'msg_type', 'session', 'username', 'version']) {
        assert.equal(typeof msg.header[field], 'string', `header.${field} of ${msg.header.msg_type}`);
      }
    }
    const [, input, stream, display, result] = iopub;
    assert.equal(input.content.code, EXECUTE_CODE);
    assert.equal(input.content.execution_count, 1);
    assert.deepEqual(stream.content, { name: 'stdout', text: 'hello from kbridge\n' });
    assert.equal(display.content.data['text/html'], '<b>bold</b>');
    assert.equal(typeof display.content.data['text/plain'], 'string');
    assert.deepEqual(result.content.data, { 'text/plain': '42' });
    assert.equal(result.content.execution_count, 1);

    assert.equal(reply.channel, 'shell');
    assert.equal(reply.header.msg_type, 'execute_reply');
    assert.equal(reply.parent_header.msg_id, request.header.msg_id);
    assert.equal(reply.content.status, 'ok');
    assert.equal(reply.content.execution_count, 1);

    // the wire protocol that was actually used
    assert.ok(sockets.length >= 1, 'a WebSocket was opened');
    for (const s of sockets) {
      assert.match(s.url, /\/api\/kernels\/[^/]+\/channels\?session_id=/);
      assert.deepEqual(s.offered, [V1], 'the client offers the v1 subprotocol');
      assert.ok(s.binaryIn + s.textIn > 0, 'frames were received');
      if (mode === 'v1') {
        assert.equal(s.protocol, V1, 'server selected the v1 subprotocol');
        assert.equal(s.textIn, 0, 'v1: every server frame is binary');
      } else {
        assert.equal(s.protocol, '', 'no subprotocol selected when none is offered');
        assert.equal(s.binaryIn, 0, 'legacy: messages without buffers are text frames');
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// error

test('execute: ZeroDivisionError gives iopub error and an error reply', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel } = await startKernel(t);
  const { reply, iopub } = await execute(kernel, '1 / 0');

  assert.deepEqual(types(iopub), ['status:busy', 'execute_input', 'error', 'status:idle']);
  const error = iopub[2];
  assert.equal(error.content.ename, 'ZeroDivisionError');
  assert.equal(error.content.evalue, 'division by zero');
  assert.ok(Array.isArray(error.content.traceback) && error.content.traceback.length > 0);
  assert.ok(error.content.traceback.every(line => typeof line === 'string'));
  assert.ok(error.content.traceback.join('\n').includes('ZeroDivisionError'));

  assert.equal(reply.content.status, 'error');
  assert.equal(reply.content.ename, 'ZeroDivisionError');
  assert.equal(reply.content.evalue, 'division by zero');
  assert.ok(Array.isArray(reply.content.traceback));

  // the kernel is still usable afterwards
  const after = await execute(kernel, '1 + 1');
  assert.equal(after.reply.content.status, 'ok');
});

// ---------------------------------------------------------------------------------------
// stdin

test('stdin: input() round trip through future.onStdin and sendInputReply', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel } = await startKernel(t);
  const requests = [];
  const { reply, iopub } = await execute(
    kernel,
    "answer = input('your name? ')\nprint('hello ' + answer)",
    { allow_stdin: true },
    msg => {
      requests.push(msg);
      if (msg.header.msg_type === 'input_request') {
        kernel.sendInputReply({ status: 'ok', value: 'kbridge user' }, msg.header);
      }
    }
  );

  assert.equal(requests.length, 1, 'exactly one stdin message');
  const [inputRequest] = requests;
  assert.equal(inputRequest.channel, 'stdin');
  assert.equal(inputRequest.header.msg_type, 'input_request');
  assert.equal(inputRequest.content.prompt, 'your name? ');
  assert.equal(inputRequest.content.password, false);

  assert.equal(reply.content.status, 'ok');
  const text = iopub
    .filter(m => m.header.msg_type === 'stream' && m.content.name === 'stdout')
    .map(m => m.content.text)
    .join('');
  assert.equal(text, 'hello kbridge user\n');

  const check = await execute(kernel, 'answer');
  assert.deepEqual(
    check.iopub.find(m => m.header.msg_type === 'execute_result').content.data,
    { 'text/plain': "'kbridge user'" }
  );
});

test('stdin: input() right after startNew works on every fresh kernel', { timeout: 180_000 }, async t => {
  // A notebook opened and immediately running input(): the WebSocket (and with it the
  // kernel-side stdin socket) is connected while the kernel is still starting. Several
  // fresh kernels, a few at a time, because a lost input_request depends on timing.
  const KERNELS = 12;
  const AT_ONCE = 4;
  const problems = [];
  const round = async n => {
    const cleanups = [];
    try {
      const { kernel } = await startKernel({ after: fn => cleanups.push(fn) });
      let prompted = false;
      const future = kernel.requestExecute({ code: "value = input('> ')", allow_stdin: true });
      future.onStdin = msg => {
        if (msg.header.msg_type !== 'input_request') return;
        prompted = true;
        kernel.sendInputReply({ status: 'ok', value: 'ok' }, msg.header);
      };
      try {
        const reply = await withTimeout(future.done, 10_000, 'execute with input()');
        if (reply.content.status !== 'ok') problems.push(`kernel ${n}: reply status ${reply.content.status}`);
      } catch (error) {
        problems.push(`kernel ${n}: input_request received: ${prompted}; ${error.message}`);
        await kernel.interrupt().catch(() => {});
      }
    } finally {
      for (const fn of cleanups) await fn();
    }
  };
  for (let first = 0; first < KERNELS; first += AT_ONCE) {
    const batch = [];
    for (let n = first; n < Math.min(first + AT_ONCE, KERNELS); n++) batch.push(round(n + 1));
    await Promise.all(batch);
  }
  assert.deepEqual(problems, [], `input() failed in ${problems.length} of ${KERNELS} fresh kernels`);
});

// ---------------------------------------------------------------------------------------
// interrupt

test('interrupt: time.sleep is interrupted with KeyboardInterrupt', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel, http } = await startKernel(t);
  const iopub = [];
  const started = Date.now();
  const future = kernel.requestExecute({ code: 'import time\ntime.sleep(60)\nprint("not interrupted")' });
  future.onIOPub = msg => iopub.push(msg);

  await waitFor(() => iopub.some(m => m.header.msg_type === 'execute_input'), STEP, 'execute_input');
  await sleep(500); // let the kernel get into time.sleep
  const interruptedAt = Date.now();
  await withTimeout(kernel.interrupt(), STEP, 'kernel.interrupt()');
  assert.deepEqual(statuses(http, 'POST', kernelPath(kernel.id, 'interrupt')), [204], 'POST .../interrupt');

  const reply = await withTimeout(future.done, 5_000, 'execute_reply after interrupt');
  const latency = Date.now() - interruptedAt;
  assert.ok(latency < 5_000, `reply ${latency} ms after the interrupt`);
  assert.ok(Date.now() - started < 30_000, 'the sleep did not run to completion');

  assert.equal(reply.content.status, 'error');
  assert.equal(reply.content.ename, 'KeyboardInterrupt');
  const error = iopub.find(m => m.header.msg_type === 'error');
  assert.ok(error, 'iopub error message');
  assert.equal(error.content.ename, 'KeyboardInterrupt');
  assert.ok(!iopub.some(m => m.header.msg_type === 'stream'), 'code after the sleep did not run');
  assert.equal(types(iopub).at(-1), 'status:idle');

  // the kernel survives the interrupt
  const after = await execute(kernel, '2 + 2');
  assert.equal(after.reply.content.status, 'ok');
});

// ---------------------------------------------------------------------------------------
// restart

test('restart: state is gone, kernel session changes, execution_count restarts', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel, serverSettings, http } = await startKernel(t);
  const id = kernel.id;

  const first = await execute(kernel, 'survivor = 42');
  const second = await execute(kernel, 'survivor');
  assert.equal(second.reply.content.execution_count, 2);
  const sessionBefore = second.reply.header.session;
  assert.ok(sessionBefore, 'kernel session id in reply header');
  assert.equal(first.reply.header.session, sessionBefore);
  assert.ok(second.iopub.every(m => m.header.session === sessionBefore));
  assert.notEqual(sessionBefore, kernel.clientId, 'kernel session differs from the client session');

  await withTimeout(kernel.restart(), 60_000, 'kernel.restart()');
  assert.deepEqual(statuses(http, 'POST', kernelPath(id, 'restart')), [200], 'POST .../restart');
  assert.equal(kernel.id, id, 'same kernel id after restart');
  assert.equal(kernel.connectionStatus, 'connected');
  const infoAfter = await withTimeout(kernel.requestKernelInfo(), STEP, 'kernel_info after restart');
  assert.equal(infoAfter.content.status, 'ok');
  assert.notEqual(infoAfter.header.session, sessionBefore, 'kernel_info_reply comes from a new kernel session');

  const after = await execute(kernel, "'survivor' in globals()");
  assert.equal(after.reply.content.status, 'ok');
  assert.equal(after.reply.content.execution_count, 1, 'execution_count restarts at 1');
  const result = after.iopub.find(m => m.header.msg_type === 'execute_result');
  assert.deepEqual(result.content.data, { 'text/plain': 'False' }, 'user namespace is gone');
  assert.equal(result.content.execution_count, 1);

  const sessionAfter = after.reply.header.session;
  assert.ok(sessionAfter);
  assert.notEqual(sessionAfter, sessionBefore, 'kernel session id changes on restart');
  assert.ok(after.iopub.every(m => m.header.session === sessionAfter));

  const model = await KernelAPI.getKernelModel(id, serverSettings);
  assert.ok(model, 'restarted kernel is still listed');
  assert.equal(model.id, id);
});

// ---------------------------------------------------------------------------------------
// shutdown

test('shutdown: the kernel disappears from the list and GET gives 404', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel, manager, serverSettings, http } = await startKernel(t);
  const id = kernel.id;
  assert.ok((await KernelAPI.listRunning(serverSettings)).some(k => k.id === id));

  await withTimeout(kernel.shutdown(), STEP, 'kernel.shutdown()');
  assert.deepEqual(statuses(http, 'DELETE', kernelPath(id)), [204], 'DELETE /api/kernels/{id}');
  assert.equal(kernel.status, 'dead');
  assert.ok(kernel.isDisposed);

  const running = await KernelAPI.listRunning(serverSettings);
  assert.ok(!running.some(k => k.id === id), 'not in KernelAPI.listRunning');
  const list = await rawGet('api/kernels');
  assert.equal(list.status, 200);
  assert.ok(Array.isArray(list.body) && !list.body.some(k => k.id === id), 'not in GET /api/kernels');

  const one = await rawGet(`api/kernels/${id}`);
  assert.equal(one.status, 404);
  assert.equal(typeof one.body?.message, 'string', '404 body carries a message');
  assert.equal(await KernelAPI.getKernelModel(id, serverSettings), undefined);

  await manager.refreshRunning();
  assert.ok(![...manager.running()].some(k => k.id === id), 'not in KernelManager.running()');
});

// ---------------------------------------------------------------------------------------
// list

test('list: listRunning and refreshRunning include the kernel with its model fields', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel, manager, serverSettings } = await startKernel(t);

  const checkModel = (model, where) => {
    assert.ok(model, `${where}: kernel listed`);
    assert.equal(model.id, kernel.id);
    assert.equal(model.name, 'python3');
    assert.ok(EXECUTION_STATES.includes(model.execution_state), `${where}: execution_state ${model.execution_state}`);
    assert.equal(model.connections, 1, `${where}: one open WebSocket`);
    assert.equal(typeof model.last_activity, 'string');
    assert.ok(!Number.isNaN(Date.parse(model.last_activity)), `${where}: last_activity is a date`);
  };

  const listed = await KernelAPI.listRunning(serverSettings);
  assert.ok(Array.isArray(listed));
  checkModel(listed.find(k => k.id === kernel.id), 'KernelAPI.listRunning');

  await manager.refreshRunning();
  checkModel([...manager.running()].find(k => k.id === kernel.id), 'KernelManager.refreshRunning');

  // after some activity the kernel is idle again and last_activity does not go backwards
  const before = Date.parse(listed.find(k => k.id === kernel.id).last_activity);
  await execute(kernel, 'pass');
  const again = (await KernelAPI.listRunning(serverSettings)).find(k => k.id === kernel.id);
  checkModel(again, 'after execute');
  assert.equal(again.execution_state, 'idle');
  assert.ok(Date.parse(again.last_activity) >= before, 'last_activity is monotonic');
});

// ---------------------------------------------------------------------------------------
// server status

test('GET /api/status: counts kernels and connections; last_activity never goes back', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel, serverSettings } = await startKernel(t);
  await execute(kernel, 'pass');
  const model = await KernelAPI.getKernelModel(kernel.id, serverSettings);

  const live = await rawGet('api/status');
  assert.equal(live.status, 200);
  assert.ok(live.body.kernels >= 1, `kernels: ${live.body.kernels}`);
  assert.ok(live.body.connections >= 1, `connections: ${live.body.connections}`);
  const started = Date.parse(live.body.started);
  const lastActivity = Date.parse(live.body.last_activity);
  assert.ok(!Number.isNaN(started) && !Number.isNaN(lastActivity), 'started and last_activity are dates');
  assert.ok(lastActivity >= Date.parse(model.last_activity), 'last_activity includes kernel activity');
  assert.ok(lastActivity > started, 'kernel activity after the server started is reflected');

  // Jupyter Server keeps its last kernel activity (and API activity) after kernels are gone,
  // so idle culling measures from the last real activity, not from the server start.
  await withTimeout(kernel.shutdown(), STEP, 'kernel.shutdown()');
  const after = await rawGet('api/status');
  assert.equal(after.status, 200);
  assert.equal(after.body.started, live.body.started);
  assert.ok(
    Date.parse(after.body.last_activity) >= lastActivity,
    `last_activity went back from ${live.body.last_activity} to ${after.body.last_activity} after the kernel shut down`
  );
});

// ---------------------------------------------------------------------------------------
// comms with binary buffers (both WebSocket protocols)

const COMM_TARGET_CODE = `
def _kbridge_echo_target(comm, open_msg):
    def _as_bytes(msg):
        return [memoryview(b).tobytes() for b in msg['buffers']]

    def _on_msg(msg):
        bufs = _as_bytes(msg)
        comm.send({'echo': msg['content']['data'], 'sizes': [len(b) for b in bufs]},
                  buffers=bufs + [b[::-1] for b in bufs])

    comm.on_msg(_on_msg)
    bufs = _as_bytes(open_msg)
    comm.send({'opened': open_msg['content']['data'], 'sizes': [len(b) for b in bufs]},
              buffers=bufs)

get_ipython().kernel.comm_manager.register_target('kbridge_echo', _kbridge_echo_target)
`;

for (const mode of ['v1', 'legacy']) {
  test(`comm: binary buffers in both directions (${mode} protocol)`, { timeout: TEST_TIMEOUT }, async t => {
    const sockets = [];
    const WebSocket = recordingWebSocket(sockets, { legacy: mode === 'legacy' });
    const { kernel } = await startKernel(t, { WebSocket });

    const setup = await execute(kernel, COMM_TARGET_CODE);
    assert.equal(setup.reply.content.status, 'ok', 'comm target registered');

    const received = [];
    const comm = kernel.createComm('kbridge_echo');
    comm.onMsg = msg => {
      received.push(msg);
    };

    const openBuf = new Uint8Array([0, 1, 2, 0xfe, 0xff]);
    await withTimeout(comm.open({ hello: 'open' }, {}, [openBuf.slice().buffer]).done, STEP, 'comm_open');
    await waitFor(() => received.length >= 1, STEP, 'comm_msg answering comm_open');
    const opened = received[0];
    assert.equal(opened.channel, 'iopub');
    assert.equal(opened.header.msg_type, 'comm_msg');
    assert.equal(opened.content.comm_id, comm.commId);
    assert.deepEqual(opened.content.data, { opened: { hello: 'open' }, sizes: [5] });
    assert.equal(opened.buffers.length, 1);
    assert.deepEqual(bytesOf(opened.buffers[0]), Buffer.from(openBuf));

    const small = Buffer.from('kbridge\u0000\xff binary', 'latin1');
    const large = crypto.randomBytes(70_000); // > 64 KiB: 64-bit WebSocket length, large offsets
    const toArrayBuffer = b => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
    const sent = comm.send({ ping: [1, 'two'] }, {}, [toArrayBuffer(small), toArrayBuffer(large)]);
    await withTimeout(sent.done, STEP, 'comm_msg reply');
    await waitFor(() => received.length >= 2, STEP, 'echoed comm_msg');
    const echo = received[1];
    assert.equal(echo.content.comm_id, comm.commId);
    assert.deepEqual(echo.content.data, { echo: { ping: [1, 'two'] }, sizes: [small.length, large.length] });
    assert.equal(echo.buffers.length, 4);
    assert.deepEqual(bytesOf(echo.buffers[0]), small);
    assert.ok(bytesOf(echo.buffers[1]).equals(large), 'large buffer echoed intact');
    assert.deepEqual(bytesOf(echo.buffers[2]), Buffer.from(small).reverse());
    assert.ok(bytesOf(echo.buffers[3]).equals(Buffer.from(large).reverse()), 'large buffer reversed by the kernel');

    await withTimeout(comm.close().done, STEP, 'comm_close');

    for (const s of sockets) {
      if (mode === 'v1') {
        assert.equal(s.protocol, V1);
        assert.equal(s.textIn, 0);
      } else {
        assert.equal(s.protocol, '');
        assert.ok(s.binaryIn >= 2, 'legacy: messages with buffers arrive as binary frames');
        assert.ok(s.textIn > 0, 'legacy: other messages arrive as text frames');
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// kernelspecs

test('KernelSpecManager: default python3 spec with display_name, language, argv, resources', { timeout: TEST_TIMEOUT }, async t => {
  const serverSettings = makeSettings();
  const manager = new KernelSpecManager({ serverSettings });
  t.after(() => manager.dispose());
  await withTimeout(manager.ready, STEP, 'KernelSpecManager.ready');

  const specs = manager.specs;
  assert.ok(specs, 'specs loaded');
  assert.equal(specs.default, 'python3');
  const python = specs.kernelspecs.python3;
  assert.ok(python, 'python3 spec listed');
  assert.equal(python.name, 'python3');
  assert.equal(typeof python.display_name, 'string');
  assert.ok(python.display_name.length > 0);
  assert.equal(python.language, 'python');
  assert.ok(Array.isArray(python.argv) && python.argv.length > 0);
  assert.ok(python.argv.every(a => typeof a === 'string'));
  assert.ok(python.argv.some(a => a.includes('{connection_file}')), 'argv keeps the {connection_file} template');
  assert.equal(typeof python.resources, 'object');
  assert.ok(python.resources !== null && !Array.isArray(python.resources));

  const direct = await KernelSpecAPI.getSpecs(serverSettings);
  assert.equal(direct.default, 'python3');
  assert.deepEqual(Object.keys(direct.kernelspecs).sort(), Object.keys(specs.kernelspecs).sort());

  await manager.refreshSpecs();
  assert.equal(manager.specs.default, 'python3');
});

// ---------------------------------------------------------------------------------------
// sessions

test('SessionManager: start a notebook session, execute, list, shut down', { timeout: TEST_TIMEOUT }, async t => {
  const http = [];
  const serverSettings = makeSettings({}, http);
  const kernelManager = new KernelManager({ serverSettings });
  const manager = new SessionManager({ serverSettings, kernelManager });
  let session = null;
  let kernelId = null;
  t.after(async () => {
    try {
      if (session && !session.isDisposed) await session.shutdown();
    } catch {
      // fall through
    }
    if (session) {
      try {
        const models = await SessionAPI.listRunning(serverSettings);
        if (models.some(m => m.id === session.id)) await SessionAPI.shutdownSession(session.id, serverSettings);
      } catch {
        // best effort
      }
    }
    if (kernelId) await shutdownQuietly(kernelId, serverSettings);
    manager.dispose();
    kernelManager.dispose();
  });
  await withTimeout(manager.ready, STEP, 'SessionManager.ready');

  const path = `compat-${crypto.randomUUID()}.ipynb`;
  session = await withTimeout(
    manager.startNew({ path, name: path, type: 'notebook', kernel: { name: 'python3' } }),
    60_000,
    'SessionManager.startNew'
  );
  assert.match(session.id, /^\w+-\w+-\w+-\w+-\w+$/);
  assert.equal(session.path, path);
  assert.equal(session.name, path);
  assert.equal(session.type, 'notebook');
  assert.ok(session.kernel, 'session has a kernel connection');
  kernelId = session.kernel.id;
  assert.equal(session.kernel.name, 'python3');

  await withTimeout(session.kernel.info, 60_000, 'session kernel info');
  const { reply, iopub } = await execute(session.kernel, 'print(6 * 7)');
  assert.equal(reply.content.status, 'ok');
  assert.ok(iopub.some(m => m.header.msg_type === 'stream' && m.content.text === '42\n'));

  const listed = (await SessionAPI.listRunning(serverSettings)).find(m => m.id === session.id);
  assert.ok(listed, 'SessionAPI.listRunning includes the session');
  assert.equal(listed.path, path);
  assert.equal(listed.type, 'notebook');
  assert.equal(listed.kernel.id, kernelId);
  assert.equal(listed.kernel.name, 'python3');

  await manager.refreshRunning();
  const running = [...manager.running()].find(m => m.id === session.id);
  assert.ok(running, 'SessionManager.running() includes the session');
  assert.equal(running.kernel.id, kernelId);
  const byPath = await manager.findByPath(path);
  assert.equal(byPath?.id, session.id, 'findByPath');
  assert.ok((await KernelAPI.listRunning(serverSettings)).some(k => k.id === kernelId), 'session kernel listed');

  const sessionId = session.id;
  await withTimeout(session.shutdown(), STEP, 'session.shutdown()');
  const sessionsPath = new URL('api/sessions', BASE_URL).pathname;
  assert.deepEqual(statuses(http, 'POST', sessionsPath), [201], 'POST /api/sessions');
  assert.deepEqual(statuses(http, 'DELETE', `${sessionsPath}/${sessionId}`), [204], 'DELETE /api/sessions/{id}');
  assert.ok(!(await SessionAPI.listRunning(serverSettings)).some(m => m.id === sessionId), 'session gone');
  assert.ok(!(await KernelAPI.listRunning(serverSettings)).some(k => k.id === kernelId), 'session kernel shut down');
  const gone = await rawGet(`api/sessions/${sessionId}`);
  assert.equal(gone.status, 404);
});

test('SessionManager: the session kernel gets JPY_SESSION_NAME = the session path', { timeout: TEST_TIMEOUT }, async t => {
  const serverSettings = makeSettings();
  const kernelManager = new KernelManager({ serverSettings });
  const manager = new SessionManager({ serverSettings, kernelManager });
  let session = null;
  t.after(async () => {
    const kernelId = session?.kernel?.id;
    try {
      if (session && !session.isDisposed) await session.shutdown();
    } catch {
      // fall through
    }
    if (kernelId) await shutdownQuietly(kernelId, serverSettings);
    manager.dispose();
    kernelManager.dispose();
  });
  await withTimeout(manager.ready, STEP, 'SessionManager.ready');

  const path = `compat-env-${crypto.randomUUID()}.ipynb`;
  session = await withTimeout(
    manager.startNew({ path, name: path, type: 'notebook', kernel: { name: 'python3' } }),
    60_000,
    'SessionManager.startNew'
  );
  await withTimeout(session.kernel.info, 60_000, 'session kernel info');
  const { reply, iopub } = await execute(session.kernel, "import os; print(repr(os.environ.get('JPY_SESSION_NAME')))");
  assert.equal(reply.content.status, 'ok');
  const printed = iopub.filter(m => m.header.msg_type === 'stream').map(m => m.content.text).join('');
  // jupyter_server's SessionManager starts the kernel with env {**os.environ, JPY_SESSION_NAME: path}
  assert.equal(printed, `'${path}'\n`, 'JPY_SESSION_NAME in the kernel environment');
});

// ---------------------------------------------------------------------------------------
// two clients on one kernel

test('two clients: both get iopub, only the requester gets the reply', { timeout: TEST_TIMEOUT }, async t => {
  const { kernel: clientA, serverSettings } = await startKernel(t);

  const otherManager = new KernelManager({ serverSettings: makeSettings() });
  const clientB = otherManager.connectTo({ model: { id: clientA.id, name: clientA.name } });
  t.after(() => {
    clientB.dispose();
    otherManager.dispose();
  });
  assert.notEqual(clientB.clientId, clientA.clientId);
  await withTimeout(clientB.info, STEP, 'second client kernel.info');

  const model = await KernelAPI.getKernelModel(clientA.id, serverSettings);
  assert.equal(model.connections, 2, 'two open WebSockets counted');

  const seenByB = [];
  clientB.anyMessage.connect((_, { msg, direction }) => {
    if (direction === 'recv') seenByB.push(msg);
  });
  const seenByA = [];
  clientA.anyMessage.connect((_, { msg, direction }) => {
    if (direction === 'recv') seenByA.push(msg);
  });

  const { reply, iopub, request } = await execute(clientA, "print('fan-out')");
  const msgId = request.header.msg_id;
  assert.equal(reply.content.status, 'ok');
  assert.ok(iopub.some(m => m.header.msg_type === 'stream' && m.content.text === 'fan-out\n'));

  const forRequest = msgs => msgs.filter(m => m.parent_header?.msg_id === msgId);
  await waitFor(
    () => forRequest(seenByB).some(m => m.header.msg_type === 'status' && m.content.execution_state === 'idle'),
    STEP,
    'idle for the first client request on the second client'
  );
  await sleep(500); // give a misrouted reply time to show up

  const onB = forRequest(seenByB);
  assert.deepEqual(types(onB), ['status:busy', 'execute_input', 'stream', 'status:idle'], 'iopub fan-out to B');
  assert.ok(onB.every(m => m.channel === 'iopub'), 'B only sees iopub for A\'s request');
  const streamB = onB.find(m => m.header.msg_type === 'stream');
  assert.equal(streamB.content.text, 'fan-out\n');
  assert.equal(streamB.parent_header.session, clientA.clientId);

  const onA = forRequest(seenByA);
  assert.equal(onA.filter(m => m.channel === 'shell').length, 1, 'A gets exactly one reply');
  assert.deepEqual(
    types(onA.filter(m => m.channel === 'iopub')),
    ['status:busy', 'execute_input', 'stream', 'status:idle']
  );

  // and the other way round: B's request is answered on B only
  const fromB = await execute(clientB, "print('from B')");
  const idB = fromB.request.header.msg_id;
  assert.equal(fromB.reply.content.status, 'ok');
  await waitFor(
    () => seenByA.some(m => m.parent_header?.msg_id === idB && m.header.msg_type === 'status' && m.content.execution_state === 'idle'),
    STEP,
    'idle for the second client request on the first client'
  );
  await sleep(500);
  const aSeesB = seenByA.filter(m => m.parent_header?.msg_id === idB);
  assert.ok(aSeesB.some(m => m.header.msg_type === 'stream' && m.content.text === 'from B\n'));
  assert.ok(aSeesB.every(m => m.channel === 'iopub'), 'A does not get B\'s reply');
});
