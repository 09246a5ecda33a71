#!/usr/bin/env node
// A websocket service as a bluegreen sidecar gate expects it: the migration
// guide's NestJS service in miniature, on Node's own http server and `ws`.
//
//   node server.js --colour blue --listen 0.0.0.0:3000 --service-version v1
//   (or COLOUR, LISTEN, SERVICE_VERSION in the environment)
//
// Routes the gate beside it uses (bg-gate --service-url http://HOST:PORT ...):
//   GET  /health       200 while the service can serve      (--service-health /health)
//   GET  /version      {"version": "v1"}                     (--service-version-path /version)
//   GET  /connections  {"connections": N} open websockets    (--service-connections-path /connections)
//   POST /drain        {"close_code":1012,"batch":N,"interval_ms":M,"timeout_ms":T}
//                      ask websockets to reconnect, N every M ms, newcomers
//                      too, for T ms; timeout_ms 0 stops  (--service-drain-path /drain)
// And the service itself:
//   GET  /             "<colour> <version>"
//   GET  /ws           websocket: greets "hello <colour> <version>", echoes text

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
const listen = option('listen', 'LISTEN', '127.0.0.1:3000');
const sep = listen.lastIndexOf(':');
const host = listen.slice(0, sep) || '0.0.0.0';
const port = Number(listen.slice(sep + 1));
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`--listen ${JSON.stringify(listen)}: expected HOST:PORT`);
  process.exit(2);
}

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

function startDrain(order) {
  const notAsked = [...sockets].filter((ws) => !asked.has(ws)).length;
  if (order.timeout_ms === 0) {
    if (drain) clearTimeout(drain.timer);
    drain = null;
    return 0;
  }
  const next = {
    batch: Math.max(1, order.batch || 10),
    intervalMs: Math.max(0, order.interval_ms ?? 1000),
    until: Date.now() + (order.timeout_ms ?? 60000),
    closeCode: order.close_code || 1012,
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

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://service').pathname;
  if (req.method === 'GET' && path === '/') return reply(res, 200, `${colour} ${version}`);
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
      let order;
      try {
        order = body ? JSON.parse(body) : {};
      } catch {
        return reply(res, 400, { error: 'the body is not JSON' }, 'application/json');
      }
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
// connections, ask the remaining websockets to reconnect, then exit.
process.on('SIGTERM', () => {
  server.close();
  for (const ws of sockets) ws.close(1012, 'service restart: reconnect');
  setTimeout(() => process.exit(0), 200).unref();
});

server.listen(port, host, () => {
  console.log(`${colour} ${version} listening on ${host}:${port}`);
});
