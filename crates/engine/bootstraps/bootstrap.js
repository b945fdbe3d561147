'use strict';
// VoltRun's Node.js runtime: a Lambda Runtime API client using only Node's standard library.
// It loads the handler named by _HANDLER (module.function) from LAMBDA_TASK_ROOT (CommonJS or ES
// modules), then loops: GET /runtime/invocation/next, call the handler (async or callback style),
// POST the JSON result or the error. Initialisation failures go to /runtime/init/error.

const fs = require('fs');
const http = require('http');
const path = require('path');
const { pathToFileURL } = require('url');

const [HOST, PORT] = process.env.AWS_LAMBDA_RUNTIME_API.split(':');
const BASE = '/2018-06-01/runtime';
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, urlPath, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port: Number(PORT), method, path: urlPath, agent, headers: headers || {} }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function errorBody(errorType, message, stack) {
  return JSON.stringify({ errorType, errorMessage: message, stackTrace: stack || [] });
}

class InitError extends Error {
  constructor(errorType, message) {
    super(message);
    this.errorType = errorType;
  }
}

async function loadHandler() {
  const spec = process.env._HANDLER || '';
  const dot = spec.lastIndexOf('.');
  const modulePath = spec.slice(0, dot);
  const functionName = spec.slice(dot + 1);
  const root = process.env.LAMBDA_TASK_ROOT || '/var/task';
  const file = ['.js', '.mjs', '.cjs'].map((ext) => path.join(root, modulePath + ext)).find((f) => fs.existsSync(f));
  if (!file) throw new InitError('Runtime.ImportModuleError', `Cannot find module '${modulePath}'`);
  let mod;
  try {
    if (file.endsWith('.mjs')) {
      mod = await import(pathToFileURL(file).href);
    } else {
      try {
        mod = require(file);
      } catch (e) {
        if (e && e.code === 'ERR_REQUIRE_ESM') mod = await import(pathToFileURL(file).href);
        else throw e;
      }
    }
  } catch (e) {
    if (e instanceof InitError) throw e;
    if (e instanceof SyntaxError) throw new InitError('Runtime.UserCodeSyntaxError', `${e.name}: ${e.message}`);
    if (e && (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_MODULE_NOT_FOUND')) {
      throw new InitError('Runtime.ImportModuleError', `Error: ${e.message}`);
    }
    throw new InitError('Runtime.Unhandled', `${(e && e.name) || 'Error'}: ${e && e.message}`);
  }
  const handler = mod[functionName] || (mod.default && mod.default[functionName]);
  if (typeof handler !== 'function') {
    throw new InitError('Runtime.HandlerNotFound', `${modulePath}.${functionName} is undefined or not exported`);
  }
  return handler;
}

function invoke(handler, event, context) {
  return new Promise((resolve, reject) => {
    const callback = (err, result) => (err ? reject(err) : resolve(result));
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

function makeContext(requestId, deadlineMs, arn) {
  return {
    awsRequestId: requestId,
    invokedFunctionArn: arn,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME || '',
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '',
    logGroupName:
      process.env.AWS_LAMBDA_LOG_GROUP_NAME || `/voltrun/${process.env.AWS_LAMBDA_FUNCTION_NAME || ''}`,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME || '',
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadlineMs - Date.now()),
  };
}

async function main() {
  let handler;
  try {
    handler = await loadHandler();
  } catch (e) {
    const type = e.errorType || 'Runtime.Unhandled';
    console.error(`[ERROR] ${type}: ${e.message}`);
    await request('POST', `${BASE}/init/error`, errorBody(type, e.message), { 'Lambda-Runtime-Function-Error-Type': type });
    process.exit(1);
  }
  for (;;) {
    const next = await request('GET', `${BASE}/invocation/next`);
    const requestId = next.headers['lambda-runtime-aws-request-id'];
    const deadline = Number(next.headers['lambda-runtime-deadline-ms'] || 0);
    const arn = next.headers['lambda-runtime-invoked-function-arn'] || '';
    let result;
    try {
      const event = next.body.length ? JSON.parse(next.body.toString('utf8')) : {};
      result = await invoke(handler, event, makeContext(requestId, deadline, arn));
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      console.error(err.stack || String(err));
      await request('POST', `${BASE}/invocation/${requestId}/error`,
        errorBody(err.name || 'Error', err.message, (err.stack || '').split('\n').slice(1).map((l) => l.trim())),
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
