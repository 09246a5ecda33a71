#!/usr/bin/env node
// A websocket service as a bluegreen sidecar gate expects it: the migration
// guide's NestJS service in miniature, on Node's own http server and `ws`.
//
//   node server.js --colour blue --listen 0.0.0.0:3000 \
//     --control-listen 127.0.0.1:3001 --service-version v1
//   (or COLOUR, LISTEN, CONTROL_LISTEN, SERVICE_VERSION in the environment)
//
// The public listener (--listen), where the load balancer sends clients:
//   GET  /             "<colour> <version>"
//   GET  /ws           websocket: greets "hello <colour> <version>", echoes text
//   GET  /health       200 while the service can serve
//
// The control listener (--control-listen, loopback by default: only the gate
// beside the service reaches it), for bg-gate --service-url http://127.0.0.1:3001:
//   GET  /health       200 while the service can serve      (--service-health /health)
//   GET  /version      {"version": "v1"}                     (--service-version-path /version)
//   GET  /connections  {"connections": N} open websockets    (--service-connections-path /connections)
//   POST /drain        {"close_code":1012,"batch":N,"interval_ms":M,"timeout_ms":T}
//                      ask websockets to reconnect, N every M ms, newcomers
//                      too, for T ms; timeout_ms 0 stops  (--service-drain-path /drain)
//
// On SIGTERM it closes what is left with 1001 (going away), never the
// drain's 1012, so a client can tell a drain from a shutdown.

'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

function option(name, env, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[env] || fallback;
}

const colour = option('colour', 'COLOUR', 'blue');
const version = option('service-version', 'SERVICE_VERSION', 'dev');
function address(name, value) {
  const sep = value.lastIndexOf(':');
  const host = value.slice(0, sep) || '0.0.0.0';
  const port = Number(value.slice(sep + 1));
  if (sep < 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error(`--${name} ${JSON.stringify(value)}: expected HOST:PORT`);
    process.exit(2);
  }
  return { host, port };
}

const listen = address('listen', option('listen', 'LISTEN', '127.0.0.1:3000'));
const control = address(
  'control-listen',
  option('control-listen', 'CONTROL_LISTEN', `127.0.0.1:${listen.port + 1}`),
);

const sockets = new Set(); // open websockets
const asked = new WeakSet(); // those already asked to reconnect
let drain = null; // { batch, intervalMs, until, timer, closeCode }

function reply(res, status, body, type = 'text/plain') {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

// One batch of the drain: the next `batch` websockets not asked yet, then
// again after `intervalMs`, until the drain's time is up.
function drainTick() {
  if (!drain) return;
  if (Date.now() >= drain.until) {
    drain = null;
    return;
  }
  let n = 0;
  for (const ws of sockets) {
    if (n >= drain.batch) break;
    if (asked.has(ws)) continue;
    asked.add(ws);
    ws.close(drain.closeCode, 'service restart: reconnect');
    n += 1;
  }
  drain.timer = setTimeout(drainTick, drain.intervalMs);
}

// A drain order as the gate sends it, checked: a bad one changes nothing.
function drainOrder(body) {
  let order;
  try {
    order = body ? JSON.parse(body) : {};
  } catch {
    return { error: 'the body is not JSON' };
  }
  if (order === null || typeof order !== 'object' || Array.isArray(order)) {
    return { error: 'the body is not a JSON object' };
  }
  const int = (name, min, max, fallback) => {
    const v = order[name] ?? fallback;
    return Number.isInteger(v) && v >= min && v <= max ? v : undefined;
  };
  const closeCode = int('close_code', 1000, 4999, 1012);
  const batch = int('batch', 1, 10000, 10);
  const intervalMs = int('interval_ms', 0, 60000, 1000);
  const timeoutMs = int('timeout_ms', 0, 3600000, 60000);
  if (closeCode !== 1012 && (closeCode === undefined || closeCode < 4000)) {
    return { error: 'close_code must be 1012 (service restart) or 4000 to 4999' };
  }
  if (batch === undefined) return { error: 'batch must be an integer from 1 to 10000' };
  if (intervalMs === undefined) return { error: 'interval_ms must be an integer from 0 to 60000' };
  if (timeoutMs === undefined) return { error: 'timeout_ms must be an integer from 0 to 3600000' };
  // At least 10 ms between batches: the drain goes on for its whole time.
  return { closeCode, batch, intervalMs: Math.max(10, intervalMs), timeoutMs };
}

function startDrain(order) {
  const notAsked = [...sockets].filter((ws) => !asked.has(ws)).length;
  if (order.timeoutMs === 0) {
    if (drain) clearTimeout(drain.timer);
    drain = null;
    return 0;
  }
  const next = {
    batch: order.batch,
    intervalMs: order.intervalMs,
    until: Date.now() + order.timeoutMs,
    closeCode: order.closeCode,
  };
  if (drain) {
    // A drain under way goes on with the newer pace and the later end.
    drain.batch = next.batch;
    drain.intervalMs = next.intervalMs;
    drain.until = Math.max(drain.until, next.until);
    drain.closeCode = next.closeCode;
  } else {
    drain = next;
    drainTick();
  }
  return notAsked;
}

// Clients' routes.
const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://service').pathname;
  if (req.method === 'GET' && path === '/') return reply(res, 200, `${colour} ${version}`);
  if (req.method === 'GET' && path === '/health') return reply(res, 200, 'ok');
  return reply(res, 404, 'not found');
});

// The gate's routes, on the control listener only.
const controlServer = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://service').pathname;
  if (req.method === 'GET' && path === '/health') return reply(res, 200, 'ok');
  if (req.method === 'GET' && path === '/version') {
    return reply(res, 200, { version }, 'application/json');
  }
  if (req.method === 'GET' && path === '/connections') {
    return reply(res, 200, { connections: sockets.size }, 'application/json');
  }
  if (req.method === 'POST' && path === '/drain') {
    let body = '';
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 4096) req.destroy();
    });
    req.on('end', () => {
      const order = drainOrder(body);
      if (order.error) return reply(res, 400, { error: order.error }, 'application/json');
      return reply(res, 202, { asked: startDrain(order) }, 'application/json');
    });
    return undefined;
  }
  return reply(res, 404, 'not found');
});

const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url, 'http://service').pathname !== '/ws') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    sockets.add(ws);
    ws.on('close', () => sockets.delete(ws));
    ws.on('error', () => sockets.delete(ws));
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.send(`hello ${colour} ${version}`);
  });
});

// A container runtime stops the service with SIGTERM: stop taking new
// connections, close the remaining websockets, then exit. The close is 1001
// (going away), not the drain's 1012: a client still here was not drained,
// and a load test counts it as cut.
process.on('SIGTERM', () => {
  server.close();
  controlServer.close();
  for (const ws of sockets) ws.close(1001, 'going away: the service is shutting down');
  setTimeout(() => process.exit(0), 200).unref();
});

server.listen(listen.port, listen.host, () => {
  console.log(`${colour} ${version} listening on ${listen.host}:${listen.port}`);
});
controlServer.listen(control.port, control.host, () => {
  console.log(`control routes for the gate on ${control.host}:${control.port}`);
});
