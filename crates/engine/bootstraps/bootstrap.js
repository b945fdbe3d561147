'use strict';
// VoltRun's Node.js runtime: a Lambda Runtime API client using only Node's standard library.
// It loads the handler named by _HANDLER (module.function) from LAMBDA_TASK_ROOT (CommonJS or ES
// modules), then loops: GET /runtime/invocation/next, call the handler (async or callback style),
// POST the JSON result or the error. Initialisation failures go to /runtime/init/error.

const fs = require('fs');
const net = require('net');
const path = require('path');
const { pathToFileURL } = require('url');

const [HOST, PORT] = process.env.AWS_LAMBDA_RUNTIME_API.split(':');

// Lambda's console, as its Node.js runtime patches it before loading the handler: every method
// writes one line to stdout, `<ISO time>\t<request id>\t<LEVEL>\t<message>`, with the message's own
// newlines turned into carriage returns (so a stack trace stays one log event); `console.log` is
// INFO; levels below AWS_LAMBDA_LOG_LEVEL (default TRACE: all) are dropped. The request id is the
// invocation in progress ("-" before the first). Where the function's log format is JSON
// (AWS_LAMBDA_LOG_FORMAT), each line is instead one JSON object (see `jsonLine`).
let currentRequestId = '-';
let currentTenantId;
const JSON_LOGS = (process.env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'];
const { format } = require('util');
{
  const wanted = (process.env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase();
  const least = Math.max(0, LEVELS.indexOf(wanted));
  for (const [rank, level] of LEVELS.entries()) {
    console[level.toLowerCase()] = rank < least ? () => {} : (message, ...params) => {
      const time = new Date().toISOString();
      const line = JSON_LOGS ? jsonLine(time, level, message, params)
        : `${time}\t${currentRequestId}\t${level}\t${format(message, ...params)}`;
      process.stdout.write(`${line.replace(/\n/g, '\r')}\n`);
    };
  }
  console.log = console.info;
}

// An error as a JSON log line shows it: its type, message and stack lines, then its own properties.
function errorFields(_key, value) {
  if (!(value instanceof Error)) return value;
  const stackTrace = typeof value.stack === 'string' ? value.stack.split('\n') : value.stack;
  return { errorType: value.constructor?.name ?? 'UnknownError', errorMessage: value.message, stackTrace, ...value };
}

// Lambda's JSON log line: `timestamp`, `level`, `requestId` (absent before the first invocation),
// `tenantId` when the invocation has one, and `message`. A lone argument stays what it is (an
// object stays an object, an error becomes its fields); with several, the message is formatted as
// console.log would, and the first error among them adds `errorType`, `errorMessage`, `stackTrace`.
function jsonLine(timestamp, level, message, params) {
  const fields = { timestamp, level, requestId: currentRequestId === '-' ? undefined : currentRequestId };
  if (currentTenantId) fields.tenantId = currentTenantId;
  if (params.length === 0) {
    fields.message = message;
    try {
      return JSON.stringify(fields, errorFields);
    } catch {
      fields.message = format(message);
      return JSON.stringify(fields);
    }
  }
  fields.message = format(message, ...params);
  const error = params.find((p) => p instanceof Error);
  if (error) {
    fields.errorType = error.constructor?.name ?? 'UnknownError';
    fields.errorMessage = error.message;
    fields.stackTrace = typeof error.stack === 'string' ? error.stack.split('\n') : [];
  }
  return JSON.stringify(fields);
}
const BASE = '/2018-06-01/runtime';

// A small HTTP/1.1 client on one kept-alive connection to the Runtime API, one request at a time:
// Node's http client (agent, parser objects, streams) costs more per request than the rest of a
// small handler's invocation.
class RuntimeClient {
  constructor() {
    this.socket = null;
    this.buffer = Buffer.alloc(0);
    this.waiting = null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: HOST, port: Number(PORT) });
      socket.setNoDelay(true);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        this.socket = socket;
        this.buffer = Buffer.alloc(0);
        socket.on('data', (chunk) => {
          this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
          this.parse();
        });
        const broken = (err) => {
          this.socket = null;
          if (this.waiting) {
            const { reject: fail } = this.waiting;
            this.waiting = null;
            fail(err || new Error('the Runtime API connection broke off'));
          }
        };
        socket.on('error', broken);
        socket.on('close', () => broken());
        resolve();
      });
      socket.once('error', reject);
    });
  }

  // Completes the waiting request once its whole response is buffered.
  parse() {
    if (!this.waiting) return;
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buffer.toString('latin1', 0, end).split('\r\n');
    const status = Number(head[0].split(' ')[1]);
    const headers = {};
    for (let i = 1; i < head.length; i++) {
      const colon = head[i].indexOf(':');
      if (colon > 0) headers[head[i].slice(0, colon).trim().toLowerCase()] = head[i].slice(colon + 1).trim();
    }
    let body;
    let rest;
    if (headers['transfer-encoding'] && headers['transfer-encoding'].toLowerCase() === 'chunked') {
      const chunks = [];
      let at = end + 4;
      for (;;) {
        const lineEnd = this.buffer.indexOf('\r\n', at);
        if (lineEnd < 0) return;
        const size = parseInt(this.buffer.toString('latin1', at, lineEnd).split(';')[0], 16);
        if (size === 0) {
          // Trailer lines, if any, then an empty line.
          const after = lineEnd + 2;
          if (this.buffer.length < after + 2) return;
          if (this.buffer[after] === 13 && this.buffer[after + 1] === 10) {
            rest = after + 2;
          } else {
            const trailersEnd = this.buffer.indexOf('\r\n\r\n', after);
            if (trailersEnd < 0) return;
            rest = trailersEnd + 4;
          }
          break;
        }
        if (this.buffer.length < lineEnd + 2 + size + 2) return;
        chunks.push(this.buffer.subarray(lineEnd + 2, lineEnd + 2 + size));
        at = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(chunks);
    } else {
      const length = Number(headers['content-length'] || 0);
      if (this.buffer.length < end + 4 + length) return;
      body = this.buffer.subarray(end + 4, end + 4 + length);
      rest = end + 4 + length;
    }
    this.buffer = this.buffer.subarray(rest);
    const { resolve } = this.waiting;
    this.waiting = null;
    if ((headers.connection || '').toLowerCase() === 'close') {
      this.socket.destroy();
      this.socket = null;
    }
    resolve({ status, headers, body: Buffer.from(body) });
  }

  async exchange(method, urlPath, body, headers) {
    if (!this.socket) await this.connect();
    const payload = body === undefined ? null : Buffer.from(body);
    let head = `${method} ${urlPath} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\n`;
    if (payload) head += `Content-Length: ${payload.length}\r\n`;
    for (const [name, value] of Object.entries(headers || {})) head += `${name}: ${value}\r\n`;
    const response = new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
    this.socket.write(payload ? Buffer.concat([Buffer.from(head + '\r\n', 'latin1'), payload]) : head + '\r\n');
    this.parse();
    return response;
  }
}

const client = new RuntimeClient();

async function request(method, urlPath, body, headers) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await client.exchange(method, urlPath, body, headers);
    } catch (e) {
      if (client.socket) client.socket.destroy();
      client.socket = null;
      if (attempt === 2) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

// Lambda's `awslambda` global, as its Node.js runtime defines it before loading the handler:
// `streamifyResponse(handler)` marks a handler `(event, responseStream, context)` whose response is
// streamed, and `HttpResponseStream.from(stream, { statusCode, headers })` puts an HTTP status and
// headers (a JSON prelude and eight zero bytes) before the body.
const HANDLER_STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const HANDLER_HIGHWATERMARK = Symbol.for('aws.lambda.runtime.handler.streaming.highWaterMark');
const STREAM_RESPONSE = 'response';

class HttpResponseStream {
  static from(stream, prelude) {
    stream.setContentType('application/vnd.awslambda.http-integration-response');
    const metadata = JSON.stringify(prelude);
    stream._onBeforeFirstWrite = (write) => {
      write(metadata);
      write(new Uint8Array(8));
    };
    return stream;
  }
}

if (!['1', 'true'].includes(process.env.AWS_LAMBDA_NODEJS_NO_GLOBAL_AWSLAMBDA)) {
  globalThis.awslambda = {
    ...globalThis.awslambda,
    streamifyResponse(handler, options) {
      handler[HANDLER_STREAMING] = STREAM_RESPONSE;
      if (options && typeof options.highWaterMark === 'number') {
        handler[HANDLER_HIGHWATERMARK] = parseInt(String(options.highWaterMark), 10);
      }
      return handler;
    },
    HttpResponseStream,
  };
}

// Runs a streaming handler: its response goes to the Runtime API as it is written, chunked, on a
// connection of its own (Node's http client, loaded only here); an error after the first byte
// travels in the request's trailers, as Lambda's runtime sends it.
async function invokeStreaming(handler, event, context) {
  const http = require('http');
  const req = http.request({
    host: HOST,
    port: Number(PORT),
    method: 'POST',
    path: `${BASE}/invocation/${context.awsRequestId}/response`,
    agent: false,
    headers: {
      'Lambda-Runtime-Function-Response-Mode': 'streaming',
      'Content-Type': 'application/octet-stream',
      'Transfer-Encoding': 'chunked',
      Trailer: ['Lambda-Runtime-Function-Error-Type', 'Lambda-Runtime-Function-Error-Body'],
    },
  });
  const answered = new Promise((resolve, reject) => {
    req.on('response', (res) => {
      res.resume();
      res.on('end', resolve);
    });
    req.on('error', reject);
  });
  // Awaited only once the handler is done: a request that fails before then (the Runtime API
  // refusing an oversized stream) must not end the runtime as an unhandled rejection meanwhile.
  answered.catch(() => {});
  let written = false;
  req.setContentType = (type) => {
    if (written) throw new Error('Cannot set content-type, too late.');
    req.setHeader('Content-Type', type);
  };
  const write = req.write.bind(req);
  req.write = (chunk, encoding, callback) => {
    const data = typeof chunk === 'string' || chunk instanceof Uint8Array ? chunk : JSON.stringify(chunk);
    if (!written && typeof req._onBeforeFirstWrite === 'function') req._onBeforeFirstWrite((c) => write(c));
    written = true;
    return write(data, encoding, callback);
  };
  try {
    const returned = handler(event, req, context);
    if (!returned || typeof returned.then !== 'function') {
      throw new Error('Streaming does not support non-async handlers.');
    }
    const result = await returned;
    if (result !== undefined) console.warn('Streaming handlers ignore return values.');
    await answered;
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    logError('Invoke Error', err);
    const body = errorBody(err.name || 'Error', err.message, stackLines(err));
    req.addTrailers({
      'Lambda-Runtime-Function-Error-Type': err.name || 'Error',
      'Lambda-Runtime-Function-Error-Body': Buffer.from(body).toString('base64'),
    });
    if (!req.writableEnded) req.end();
    await answered.catch(() => {});
  }
}

// An error as Lambda's runtime logs it: the message, then a tab and the error as JSON (its type,
// message, code, own properties and stack lines), all on one line; or, where the log format is JSON,
// the error alone as a JSON line's message.
function logError(message, err) {
  if (JSON_LOGS) {
    console.error(err);
    return;
  }
  const fields = { errorType: err.name, errorMessage: err.message, code: err.code, ...err };
  if (typeof err.stack === 'string') fields.stack = err.stack.split('\n');
  let json;
  try {
    json = JSON.stringify(fields);
  } catch {
    json = JSON.stringify({ errorType: err.name, errorMessage: err.message });
  }
  console.error(message, `\t${json}`);
}

// An error's stack frames, for its error document.
function stackLines(err) {
  return (typeof err.stack === 'string' ? err.stack : '').split('\n').slice(1).map((l) => l.trim());
}

function errorBody(errorType, message, stack) {
  return JSON.stringify({ errorType, errorMessage: message, stackTrace: stack || [] });
}

// A failed start of one of Lambda's types, named as its runtime names them (an own `name`, which
// the logged error's JSON shows too); a syntax error keeps the stack that points into the code.
class InitError extends Error {
  constructor(errorType, message, stack) {
    super(message);
    this.name = errorType;
    if (stack !== undefined) this.stack = stack;
  }
}

// Lambda's handler string: the module is the last path segment up to its first dot (with the
// directories before it), the export is the rest, itself a dotted path into nested objects
// (`src/index.routes.get` is `routes.get` of `src/index`).
function parseHandler(spec) {
  const slash = spec.lastIndexOf('/');
  const base = spec.slice(slash + 1);
  const dot = base.indexOf('.');
  return { dir: spec.slice(0, slash + 1), name: base.slice(0, dot), exportPath: base.slice(dot + 1) };
}

// Loads the handler as Lambda's runtime does: the module file as it is named or with `.js`, `.mjs`
// or `.cjs`, imported (CommonJS or ES module alike), else the module name resolved as a package
// from the code root; then the export, or the same path under the module's default export. A syntax
// error or a module CommonJS cannot find is an init error of Lambda's types; any other error the
// module's own code throws is reported as itself.
async function loadHandler() {
  const spec = process.env._HANDLER || '';
  const { dir, name, exportPath } = parseHandler(spec);
  const root = process.env.LAMBDA_TASK_ROOT || '/var/task';
  const base = path.resolve(root, dir, name);
  let mod;
  try {
    // The name as it is counts only as a file: a directory beside `app.js` named `app` is not the
    // module (Lambda's runtime requires the bare path, which finds `app.js` first).
    const isFile = (f) => { try { return fs.statSync(f).isFile(); } catch { return false; } };
    const file = ['', '.js', '.mjs', '.cjs'].map((ext) => base + ext).find(isFile);
    mod = file ? await import(pathToFileURL(file).href)
      : require(require.resolve(name, { paths: [root, path.join(root, dir)] }));
  } catch (e) {
    if (e instanceof SyntaxError) throw new InitError('Runtime.UserCodeSyntaxError', String(e), e.stack);
    if (e && e.code === 'MODULE_NOT_FOUND') throw new InitError('Runtime.ImportModuleError', String(e));
    throw e;
  }
  const find = (from) => exportPath.split('.').reduce((o, key) => (o && typeof o === 'object' ? o[key] : undefined), from);
  let handler = find(mod);
  if (!handler && mod && typeof mod === 'object' && 'default' in mod) handler = find(mod.default);
  if (!handler) throw new InitError('Runtime.HandlerNotFound', `${spec} is undefined or not exported`);
  if (typeof handler !== 'function') throw new InitError('Runtime.HandlerNotFound', `${spec} is not a function`);
  return handler;
}

// Calls the handler: async (its promise), callback style (its callback), or a plain return. A
// callback's outcome is held, as Lambda's Node.js runtime holds it, until the event loop has nothing
// left of the function's (timers, sockets, pending I/O) while `context.callbackWaitsForEmptyEventLoop`
// is true (the default); set to false, it goes at once, and what is left runs on in later
// invocations (the instance is frozen in between).
function invoke(handler, event, context) {
  return new Promise((resolve, reject) => {
    const callback = (err, result) => {
      const settle = () => (err ? reject(err) : resolve(result));
      if (context.callbackWaitsForEmptyEventLoop) afterEventLoopEmpties(settle);
      else settle();
    };
    let returned;
    try {
      returned = handler(event, context, callback);
    } catch (e) {
      reject(e);
      return;
    }
    if (returned && typeof returned.then === 'function') returned.then(resolve, reject);
    else if (handler.length < 3) resolve(returned);
  });
}

// Runs `then` once nothing but the runtime's own connection keeps the event loop going: that
// connection stops counting until then (Node's 'beforeExit' comes when the loop is empty).
function afterEventLoopEmpties(then) {
  if (client.socket) client.socket.unref();
  process.once('beforeExit', () => {
    if (client.socket) client.socket.ref();
    then();
  });
}

function jsonHeader(headers, name) {
  const value = headers[name];
  return value ? JSON.parse(value) : undefined;
}

// The handler's context with the fields Lambda's runtime gives it (the optional ones undefined
// unless the invocation carried them); `callbackWaitsForEmptyEventLoop` is not enumerable, as in
// Lambda's managed runtime (aws-lambda-ric 4 has no such property).
function makeContext(requestId, deadlineMs, arn, headers) {
  const context = {
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    clientContext: jsonHeader(headers, 'lambda-runtime-client-context'),
    identity: jsonHeader(headers, 'lambda-runtime-cognito-identity'),
    invokedFunctionArn: arn,
    awsRequestId: requestId,
    tenantId: headers['lambda-runtime-aws-tenant-id'],
    xRayTraceId: headers['lambda-runtime-trace-id'],
    getRemainingTimeInMillis: () => Math.max(0, deadlineMs - Date.now()),
  };
  Object.defineProperty(context, 'callbackWaitsForEmptyEventLoop', { value: true, writable: true });
  return context;
}

async function main() {
  let handler;
  try {
    handler = await loadHandler();
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const type = err.name || 'Error';
    logError('Init Error', err);
    await request('POST', `${BASE}/init/error`, errorBody(type, err.message, stackLines(err)),
      { 'Lambda-Runtime-Function-Error-Type': type });
    process.exit(1);
  }
  for (;;) {
    const next = await request('GET', `${BASE}/invocation/next`);
    const requestId = next.headers['lambda-runtime-aws-request-id'];
    currentRequestId = requestId;
    currentTenantId = next.headers['lambda-runtime-aws-tenant-id'];
    const deadline = Number(next.headers['lambda-runtime-deadline-ms'] || 0);
    const arn = next.headers['lambda-runtime-invoked-function-arn'] || '';
    let result;
    try {
      const event = next.body.length ? JSON.parse(next.body.toString('utf8')) : {};
      const context = makeContext(requestId, deadline, arn, next.headers);
      if (handler[HANDLER_STREAMING] === STREAM_RESPONSE) {
        await invokeStreaming(handler, event, context);
        continue;
      }
      result = await invoke(handler, event, context);
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      logError('Invoke Error', err);
      await request('POST', `${BASE}/invocation/${requestId}/error`,
        errorBody(err.name || 'Error', err.message, stackLines(err)),
        { 'Lambda-Runtime-Function-Error-Type': 'Unhandled' });
      continue;
    }
    let payload;
    try {
      payload = JSON.stringify(result === undefined ? null : result);
    } catch (e) {
      await request('POST', `${BASE}/invocation/${requestId}/error`,
        errorBody('Runtime.MarshalError', `Unable to stringify response body: ${e.message}`),
        { 'Lambda-Runtime-Function-Error-Type': 'Runtime.MarshalError' });
      continue;
    }
    await request('POST', `${BASE}/invocation/${requestId}/response`, payload, { 'Content-Type': 'application/json' });
  }
}

main().catch((e) => {
  console.error(`[ERROR] Runtime.ExitError: ${e && e.stack}`);
  process.exit(1);
});
