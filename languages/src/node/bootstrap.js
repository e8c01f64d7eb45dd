'use strict';
// Spindle's Node.js bootstrap: the child side of docs/child-protocol.md.
//
// Cells are evaluated through the in-process inspector (`Runtime.evaluate` with `replMode`), the
// mode of the browser consoles: top-level await works, and top-level let/const/class persist
// across cells and may be declared again when a cell is re-run. `import()` and static imports
// are rewritten to an importer that resolves from the working directory. An awaiting cell is
// interrupted from the event loop; busy JavaScript is stopped by a small worker thread that asks
// the inspector to terminate it (see "Interrupts").
//
// Standard library only; keep start-up cheap (no `net`, `stream` or `child_process` here).

const fs = require('fs');
const path = require('path');
const util = require('util');
const vm = require('vm');
const EventEmitter = require('events');
const Module = require('module');
const { StringDecoder } = require('string_decoder');

const BOOTSTRAP_FILE = __filename;
const env = process.env;
const NONCE = env.SPINDLE_NONCE || '';
const MAX_FRAME = 16 * 1024 * 1024;
const BATCH_BYTES = 64 * 1024;
const BATCH_MS = 4;

// ---------------------------------------------------------------------------------------------
// Low-level writing

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms) {
  Atomics.wait(sleepCell, 0, 0, ms);
}

let hostGone = false;

// Shared with the interrupt worker (see "Interrupts"): [0] SIGINTs seen by the main thread,
// [1] the main thread is writing a frame (do not terminate it half-way), [2] the token of the
// execution in flight (0: none), [3] 1 when the worker has terminated JavaScript and the main
// thread's handler has not yet seen it, [4] the token that was in flight then.
const interruptState = new Int32Array(new SharedArrayBuffer(20));

// Write all of `buf` to `fd`, waiting out EAGAIN (someone made the fd non-blocking).
function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code === 'EAGAIN' || e.code === 'EINTR') {
        sleepMs(1);
        continue;
      }
      throw e;
    }
  }
}

const EVT_FD = fs.openSync(env.SPINDLE_EVT, fs.constants.O_WRONLY);

function writeEvt(buf) {
  if (hostGone) return;
  try {
    writeAll(EVT_FD, buf);
  } catch (e) {
    // The host closed its end: nobody is listening any more.
    hostGone = true;
    process.exit(1);
  }
}

let syncN = 0;

// Sentinel on the PTY (fd 1) and stderr (fd 2): frames with sync >= n wait for both.
function sentinel() {
  syncN += 1;
  const s = Buffer.from(`\x1b]5151;${NONCE};${syncN}\x07`, 'latin1');
  Atomics.store(interruptState, 1, 1);
  for (const fd of [1, 2]) {
    try {
      writeAll(fd, s);
    } catch (_) {
      // fd closed by user code; the host then cannot match it either way.
    }
  }
  Atomics.store(interruptState, 1, 0);
  spawnedSinceSync = false;
}

function frame(kind, payload) {
  Atomics.store(interruptState, 1, 1); // a frame must not be cut by an interrupt
  try {
    let off = 0;
    do {
      const body = payload.subarray(off, Math.min(payload.length, off + MAX_FRAME));
      const head = Buffer.from(`${kind} ${syncN} ${body.length}\n`, 'latin1');
      writeEvt(Buffer.concat([head, body], head.length + body.length));
      off += body.length;
    } while (off < payload.length);
  } finally {
    Atomics.store(interruptState, 1, 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Subprocesses: sync before a frame only when one may have written to the PTY or stderr.

let spawnedSinceSync = false;
let liveChildren = 0;
let childProcessPatched = false;
let loadListSeen = 0;

// `child_process` is costly to load, so it is patched once the user has loaded it; a spawn
// before that (same cell) is covered by treating the first sight of the module as a spawn.
function watchChildProcess() {
  if (childProcessPatched) return;
  const list = process.moduleLoadList;
  if (!Array.isArray(list)) {
    spawnedSinceSync = true; // cannot tell: always sync
    return;
  }
  if (list.length === loadListSeen) return;
  loadListSeen = list.length;
  if (!list.includes('NativeModule child_process')) return;
  childProcessPatched = true;
  spawnedSinceSync = true;
  const cp = require('child_process');
  const origSpawn = cp.ChildProcess.prototype.spawn;
  cp.ChildProcess.prototype.spawn = function spawn(...args) {
    flushOut();
    spawnedSinceSync = true;
    const r = origSpawn.apply(this, args);
    if (this.pid !== undefined) {
      liveChildren += 1;
      this.once('exit', () => {
        liveChildren -= 1;
        spawnedSinceSync = true;
      });
    }
    return r;
  };
  for (const name of ['spawnSync', 'execSync', 'execFileSync']) {
    const orig = cp[name];
    cp[name] = {
      [name](...args) {
        flushOut();
        spawnedSinceSync = true;
        return orig.apply(this, args);
      },
    }[name];
  }
}

function syncIfNeeded() {
  watchChildProcess();
  if (spawnedSinceSync || liveChildren > 0) sentinel();
}

// ---------------------------------------------------------------------------------------------
// The language's own stdout/stderr: batched, framed as `o`/`e`.

let outKind = 0; // 1 stdout, 2 stderr
let outParts = [];
let outSize = 0;
let outTimer = null;
let lastFlush = 0;

function flushOut() {
  if (outTimer !== null) {
    clearTimeout(outTimer);
    outTimer = null;
  }
  if (outParts.length === 0) return;
  const parts = outParts;
  const kind = outKind;
  outParts = [];
  outSize = 0;
  lastFlush = performance.now();
  let buf;
  if (parts.every((p) => typeof p === 'string')) {
    buf = Buffer.from(parts.length === 1 ? parts[0] : parts.join(''), 'utf8');
  } else {
    buf = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)));
  }
  syncIfNeeded();
  frame(kind === 1 ? 'o' : 'e', buf);
}

function pushOut(kind, chunk, encoding) {
  if (typeof chunk === 'string') {
    if (encoding && typeof encoding === 'string' && !/^utf-?8$/i.test(encoding) && Buffer.isEncoding(encoding)) {
      chunk = Buffer.from(chunk, encoding);
    }
  } else if (chunk instanceof Uint8Array) {
    chunk = Buffer.from(chunk); // copy: the caller may reuse its buffer
  } else {
    const err = new TypeError(
      `The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ${util.inspect(chunk)}`,
    );
    err.code = 'ERR_INVALID_ARG_TYPE';
    throw err;
  }
  if (chunk.length === 0) return;
  if (outKind !== kind && outParts.length) flushOut();
  outKind = kind;
  outParts.push(chunk);
  outSize += chunk.length;
  // Live output: the first write after a quiet spell goes at once, later ones are batched.
  if (outSize >= BATCH_BYTES || performance.now() - lastFlush >= BATCH_MS) flushOut();
  else if (outTimer === null) outTimer = setTimeout(flushOut, BATCH_MS);
}

// A writable-stream look-alike (EventEmitter based: `stream` costs ~7 ms to load). fd 1 and 2
// stay untouched, so subprocesses inherit a blocking PTY and stderr.
function makeStdio(kind) {
  const s = new EventEmitter();
  Object.assign(s, {
    fd: kind,
    isTTY: false,
    writable: true,
    writableEnded: false,
    writableFinished: false,
    writableNeedDrain: false,
    writableObjectMode: false,
    writableLength: 0,
    writableHighWaterMark: 16384,
    writableCorked: 0,
    destroyed: false,
    _isStdio: true,
    _writableState: { errorEmitted: false, ended: false, finished: false, length: 0 },
    _type: 'pipe',
    columns: 80,
    write(chunk, encoding, cb) {
      if (typeof encoding === 'function') {
        cb = encoding;
        encoding = undefined;
      }
      pushOut(kind, chunk, encoding);
      if (typeof cb === 'function') process.nextTick(cb, null);
      return true;
    },
    end(chunk, encoding, cb) {
      if (typeof chunk === 'function') {
        cb = chunk;
        chunk = undefined;
      } else if (typeof encoding === 'function') {
        cb = encoding;
        encoding = undefined;
      }
      if (chunk !== undefined && chunk !== null) pushOut(kind, chunk, encoding);
      if (typeof cb === 'function') process.nextTick(cb, null);
      return this;
    },
    cork() {},
    uncork() {},
    setDefaultEncoding() {
      return this;
    },
    destroy() {
      return this;
    },
    getColorDepth() {
      return 1;
    },
    hasColors() {
      return false;
    },
    getWindowSize() {
      return [80, 24];
    },
  });
  return s;
}

const stdoutStream = makeStdio(1);
const stderrStream = makeStdio(2);
for (const [name, stream] of [
  ['stdout', stdoutStream],
  ['stderr', stderrStream],
]) {
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: true,
    get: () => stream,
  });
}

// Messages and replies

function wellFormed(_key, v) {
  return typeof v === 'string' && typeof v.toWellFormed === 'function' ? v.toWellFormed() : v;
}

function message(obj) {
  flushOut();
  syncIfNeeded();
  frame('m', Buffer.from(JSON.stringify(obj, wellFormed), 'utf8'));
}

function sendDone(id, status, exitStatus, userExpressions) {
  flushOut();
  watchChildProcess();
  sentinel(); // always: a subprocess's last output belongs to this request
  const msg = { type: 'done', id, status, exit_status: exitStatus };
  if (userExpressions) msg.user_expressions = userExpressions;
  frame('m', Buffer.from(JSON.stringify(msg, wellFormed), 'utf8'));
}

function reply(id, content) {
  message({ type: 'reply', id, content });
  sendDone(id, 'ok', 0);
}

process.on('exit', () => {
  try {
    flushOut();
  } catch (_) {
    // exiting anyway
  }
});

// ---------------------------------------------------------------------------------------------
// Errors

function cellName(n) {
  return `<cell-${n}>`;
}

// Drop the frames of this bootstrap and of the inspector call that ran the cell.
function cleanStack(stack) {
  const out = [];
  for (const line of String(stack).split('\n')) {
    if (/^\s+at /.test(line)) {
      // Everything from the call that ran the cell down is ours.
      if (/node:inspector|spindle:eval|\(node:vm:/.test(line)) break;
      if (line.includes(BOOTSTRAP_FILE)) continue;
    }
    out.push(line);
  }
  return out;
}

function errorContent(err, where) {
  let ename;
  let evalue;
  let traceback;
  if (util.types.isNativeError(err) || (err && typeof err === 'object' && typeof err.stack === 'string')) {
    ename = String(err.name || 'Error');
    evalue = String(err.message ?? '');
    traceback = typeof err.stack === 'string' ? cleanStack(err.stack) : [`${ename}: ${evalue}`];
  } else {
    ename = 'Uncaught';
    evalue = util.inspect(err);
    traceback = [`Uncaught ${evalue}`];
  }
  // A syntax error in the cell itself has no stack frame: point at the line.
  if (where && where.code !== undefined && ename === 'SyntaxError' && !traceback.some((l) => l.includes(where.file))) {
    const line = where.code.split('\n')[where.line] ?? '';
    if (where.line < where.code.split('\n').length) {
      traceback.unshift(`${where.file}:${where.line + 1}`, line, `${' '.repeat(Math.max(0, where.column))}^`, '');
    }
  }
  return { type: 'error', ename, evalue, traceback };
}

// ---------------------------------------------------------------------------------------------
// Source scanning: enough of a JavaScript lexer to find static/dynamic imports, bracket balance
// and the expression before a cursor. Regex-vs-division uses the usual previous-token rule.

const KEYWORDS_BEFORE_EXPR = new Set([
  'return', 'typeof', 'instanceof', 'in', 'of', 'new', 'delete', 'void', 'throw', 'case', 'do',
  'else', 'yield', 'await', 'extends',
]);

function isIdStart(c) {
  return /[A-Za-z_$\u0080-\uffff]/.test(c);
}
function isIdPart(c) {
  return /[\w$\u0080-\uffff]/.test(c);
}

function lex(src) {
  const toks = [];
  const stack = []; // '(', '[', '{', '${'
  let unterminated = null; // 'template' | 'comment' | 'string' | 'regex'
  let mismatch = false;
  let i = 0;
  const n = src.length;
  let nlBefore = false;
  const prev = () => toks[toks.length - 1];
  const push = (type, value, start) => {
    toks.push({ type, value, start, end: i, nl: nlBefore, depth: stack.length });
    nlBefore = false;
  };
  const regexOk = () => {
    const t = prev();
    if (!t) return true;
    if (t.type === 'name') return KEYWORDS_BEFORE_EXPR.has(t.value);
    if (t.type === 'punct') return !(t.value === ')' || t.value === ']' || t.value === '}');
    return false;
  };
  // Scan template characters from i; stops after the closing backtick or after `${`.
  const templateRest = () => {
    while (i < n) {
      const c = src[i];
      if (c === '\\') {
        i += 2;
      } else if (c === '`') {
        i += 1;
        return;
      } else if (c === '$' && src[i + 1] === '{') {
        i += 2;
        stack.push('${');
        return;
      } else {
        i += 1;
      }
    }
    unterminated = 'template';
  };
  while (i < n) {
    const c = src[i];
    const start = i;
    if (c === '\n') {
      nlBefore = true;
      i += 1;
    } else if (/\s/.test(c)) {
      i += 1;
    } else if (c === '/' && src[i + 1] === '/') {
      while (i < n && src[i] !== '\n') i += 1;
    } else if (c === '/' && src[i + 1] === '*') {
      const end = src.indexOf('*/', i + 2);
      if (end < 0) {
        unterminated = 'comment';
        i = n;
      } else {
        if (src.slice(i, end).includes('\n')) nlBefore = true;
        i = end + 2;
      }
    } else if (c === '"' || c === "'") {
      i += 1;
      while (i < n && src[i] !== c && src[i] !== '\n') i += src[i] === '\\' ? 2 : 1;
      if (i >= n || src[i] === '\n') unterminated = unterminated || 'string';
      else i += 1;
      push('str', src.slice(start, i), start);
    } else if (c === '`') {
      i += 1;
      templateRest();
      push('tmpl', src.slice(start, i), start);
    } else if (isIdStart(c)) {
      while (i < n && isIdPart(src[i])) i += 1;
      push('name', src.slice(start, i), start);
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(src[i + 1] || ''))) {
      while (i < n && /[\w.]/.test(src[i])) i += 1;
      push('num', src.slice(start, i), start);
    } else if (c === '/' && regexOk()) {
      i += 1;
      let inClass = false;
      while (i < n && src[i] !== '\n') {
        const d = src[i];
        if (d === '\\') i += 2;
        else {
          i += 1;
          if (d === '[') inClass = true;
          else if (d === ']') inClass = false;
          else if (d === '/' && !inClass) break;
        }
      }
      if (i > n || src[i - 1] !== '/' || i === start + 1) unterminated = unterminated || 'regex';
      while (i < n && isIdPart(src[i])) i += 1;
      push('regex', src.slice(start, i), start);
    } else if (c === '(' || c === '[' || c === '{') {
      i += 1;
      push('punct', c, start);
      stack.push(c);
    } else if (c === ')' || c === ']' || c === '}') {
      const open = stack.pop();
      if (c === '}' && open === '${') {
        i += 1;
        templateRest();
        push('tmpl', src.slice(start, i), start);
      } else {
        if (open !== { ')': '(', ']': '[', '}': '{' }[c]) mismatch = true;
        i += 1;
        push('punct', c, start);
      }
    } else if (c === '?' && src[i + 1] === '.' && !/[0-9]/.test(src[i + 2] || '')) {
      i += 2;
      push('punct', '?.', start);
    } else if (c === '.' && src[i + 1] === '.' && src[i + 2] === '.') {
      i += 3;
      push('punct', '...', start);
    } else {
      i += 1;
      push('punct', c, start);
    }
  }
  return { toks, stack, unterminated, mismatch };
}

const IMPORT_FN = '__spindle_import';

// Rewrite `import(...)` to the session's importer and static `import ... from '...'` statements
// to awaited destructuring, keeping line numbers.
function rewriteImports(code) {
  if (!code.includes('import')) return code;
  const { toks } = lex(code);
  const edits = [];
  for (let k = 0; k < toks.length; k++) {
    const t = toks[k];
    if (t.type !== 'name' || t.value !== 'import') continue;
    const before = toks[k - 1];
    const next = toks[k + 1];
    if (before && before.type === 'punct' && (before.value === '.' || before.value === '?.')) continue;
    if (next && next.type === 'punct' && next.value === '(') {
      edits.push({ start: t.start, end: t.end, text: IMPORT_FN });
      continue;
    }
    if (next && next.type === 'punct' && next.value === '.') continue; // import.meta
    const atStatement = t.depth === 0 && (!before || before.nl || t.nl || (before.type === 'punct' && (before.value === ';' || before.value === '}')));
    if (!atStatement || !next) continue;
    const stmt = parseStaticImport(toks, k);
    if (!stmt) continue;
    const original = code.slice(t.start, stmt.end);
    const newlines = (original.match(/\n/g) || []).length;
    edits.push({ start: t.start, end: stmt.end, text: stmt.text + '\n'.repeat(newlines) });
    k = stmt.lastTok;
  }
  if (!edits.length) return code;
  let out = '';
  let at = 0;
  for (const e of edits) {
    out += code.slice(at, e.start) + e.text;
    at = e.end;
  }
  return out + code.slice(at);
}

// `import X, {a, b as c} from 'm' with {...};` starting at toks[k] ('import').
function parseStaticImport(toks, k) {
  let j = k + 1;
  const tok = (o = 0) => toks[j + o];
  const isP = (t, v) => t && t.type === 'punct' && t.value === v;
  const isN = (t, v) => t && t.type === 'name' && (v === undefined || t.value === v);
  let defaultName = null;
  let nsName = null;
  let named = null;
  let spec;
  if (tok() && tok().type === 'str') {
    spec = tok().value;
    j += 1;
  } else {
    if (isN(tok()) && tok().value !== 'from') {
      defaultName = tok().value;
      j += 1;
      if (isP(tok(), ',')) j += 1;
    } else if (isN(tok(), 'from') && isN(tok(1), 'from')) {
      defaultName = 'from';
      j += 1;
    }
    if (isP(tok(), '*')) {
      if (!isN(tok(1), 'as') || !isN(tok(2))) return null;
      nsName = tok(2).value;
      j += 3;
    } else if (isP(tok(), '{')) {
      j += 1;
      named = [];
      while (tok() && !isP(tok(), '}')) {
        const imported = tok();
        if (!(imported.type === 'name' || imported.type === 'str')) return null;
        j += 1;
        let local = imported.type === 'name' ? imported.value : null;
        if (isN(tok(), 'as')) {
          if (!isN(tok(1))) return null;
          local = tok(1).value;
          j += 2;
        }
        if (local === null) return null;
        named.push(local === imported.value ? local : `${imported.value}: ${local}`);
        if (isP(tok(), ',')) j += 1;
        else if (!isP(tok(), '}')) return null;
      }
      if (!isP(tok(), '}')) return null;
      j += 1;
    }
    if (!defaultName && !nsName && !named) return null;
    if (!isN(tok(), 'from') || !tok(1) || tok(1).type !== 'str') return null;
    spec = tok(1).value;
    j += 2;
  }
  let end = toks[j - 1].end;
  let attrs = '';
  if ((isN(tok(), 'with') || isN(tok(), 'assert')) && isP(tok(1), '{') && !tok().nl) {
    const key = tok().value;
    let depth = 0;
    const first = j + 1;
    let last = first;
    for (; last < toks.length; last++) {
      if (isP(toks[last], '{')) depth += 1;
      else if (isP(toks[last], '}') && --depth === 0) break;
    }
    if (last >= toks.length) return null;
    attrs = `, { ${key}: ${tokensText(toks, first, last)} }`;
    j = last + 1;
    end = toks[last].end;
  }
  if (isP(tok(), ';')) {
    end = tok().end;
    j += 1;
  }
  const call = `await ${IMPORT_FN}(${spec}${attrs})`;
  let text;
  if (!defaultName && !nsName && !named) text = `${call};`;
  else if (nsName) text = `const ${nsName} = ${call}${defaultName ? `, ${defaultName} = ${nsName}.default` : ''};`;
  else {
    const parts = [];
    if (defaultName) parts.push(`default: ${defaultName}`);
    if (named) parts.push(...named);
    text = `const { ${parts.join(', ')} } = ${call};`;
  }
  return { text, end, lastTok: j - 1 };
}

function tokensText(toks, first, last) {
  return toks
    .slice(first, last + 1)
    .map((t) => t.value)
    .join(' ');
}

// ---------------------------------------------------------------------------------------------
// The session's globals: require/import relative to the working directory, display helpers.

const requireByDir = new Map();
function requireFrom(dir) {
  let r = requireByDir.get(dir);
  if (!r) {
    r = Module.createRequire(path.join(dir, '[spindle]'));
    requireByDir.set(dir, r);
  }
  return r;
}

function userRequire(id) {
  return requireFrom(process.cwd())(id);
}
userRequire.resolve = function resolve(request, options) {
  return requireFrom(process.cwd()).resolve(request, options);
};
userRequire.resolve.paths = function paths(request) {
  return requireFrom(process.cwd()).resolve.paths(request);
};
Object.defineProperty(userRequire, 'cache', { get: () => Module._cache, enumerable: true });
Object.defineProperty(userRequire, 'extensions', { get: () => Module._extensions, enumerable: true });

// import() needs a script with a referrer in the working directory.
const importerByDir = new Map();
function importerFor(dir) {
  let f = importerByDir.get(dir);
  if (f) return f;
  const filename = path.join(dir, '[spindle]');
  const src = '(function (s, o) { return o === undefined ? import(s) : import(s, o); })';
  const loader = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
  let script;
  if (loader) {
    script = new vm.Script(src, { filename, importModuleDynamically: loader });
  } else {
    // Older Node: resolve relative specifiers ourselves, bare ones as `require` would.
    script = new vm.Script(src, {
      filename,
      importModuleDynamically: (specifier, _script, attributes) => {
        let target = specifier;
        if (/^\.{0,2}\//.test(specifier)) target = require('url').pathToFileURL(path.resolve(dir, specifier)).href;
        else if (!/^[a-z][a-z0-9+.-]*:/i.test(specifier) && !Module.isBuiltin(specifier)) {
          try {
            target = require('url').pathToFileURL(requireFrom(dir).resolve(specifier)).href;
          } catch (_) {
            // let import() report it
          }
        }
        return attributes && Object.keys(attributes).length ? import(target, { with: attributes }) : import(target);
      },
    });
  }
  f = script.runInThisContext();
  importerByDir.set(dir, f);
  return f;
}

// The default loader is experimental in Node 20/21 and says so on first use; the user did not
// ask for it, so that one warning is dropped.
const emitWarning = process.emitWarning;
process.emitWarning = function filteredEmitWarning(warning, ...rest) {
  const text = typeof warning === 'string' ? warning : warning && warning.message;
  if (typeof text === 'string' && text.includes('USE_MAIN_CONTEXT_DEFAULT_LOADER')) return undefined;
  return emitWarning.call(this, warning, ...rest);
};

function userImport(specifier, options) {
  const f = importerFor(process.cwd());
  return options === undefined ? f(specifier) : f(specifier, options);
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
const JPEG_MAGIC = Buffer.from([0xff, 0xd8, 0xff]);

function toBase64(data) {
  if (typeof data === 'string') return data.replace(/^data:[^;,]*;base64,/, '');
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
  throw new TypeError('expected a Buffer, Uint8Array, ArrayBuffer or base64 string');
}

function jsonValue(v) {
  const s = JSON.stringify(v);
  return s === undefined ? null : JSON.parse(s);
}

function isMimeBundle(obj) {
  if (!obj || typeof obj !== 'object' || Array.isArray(obj) || util.types.isProxy(obj)) return false;
  const proto = Object.getPrototypeOf(obj);
  if (proto !== Object.prototype && proto !== null) return false;
  const keys = Object.keys(obj);
  return keys.length > 0 && keys.every((k) => /^[a-z]+\/[\w.+-]+$/i.test(k));
}

// A value's own MIME bundle (`_repr_mimebundle_`), else text/plain; [data, metadata].
function bundleOf(value, { forDisplay }) {
  let data = null;
  let metadata = {};
  if (value && (typeof value === 'object' || typeof value === 'function') && typeof value._repr_mimebundle_ === 'function') {
    const b = value._repr_mimebundle_();
    if (Array.isArray(b)) {
      data = b[0];
      metadata = b[1] || {};
    } else data = b;
  } else if (forDisplay && isMimeBundle(value)) {
    data = value;
  } else if (forDisplay && typeof value === 'string') {
    return [{ 'text/plain': value }, {}];
  } else if (forDisplay && value instanceof Uint8Array && value.length > 4) {
    const head = Buffer.from(value.buffer, value.byteOffset, 4);
    if (head.equals(PNG_MAGIC)) return [{ 'image/png': toBase64(value) }, {}];
    if (head.subarray(0, 3).equals(JPEG_MAGIC)) return [{ 'image/jpeg': toBase64(value) }, {}];
  }
  const out = {};
  if (data && typeof data === 'object') {
    for (const [k, v] of Object.entries(data)) {
      if (/^image\/(png|jpeg|gif|webp)$/.test(k)) out[k] = toBase64(v);
      else if (k === 'application/json' || k.endsWith('+json')) out[k] = jsonValue(v);
      else out[k] = typeof v === 'string' ? v : String(v);
    }
  }
  if (!('text/plain' in out) && !(data && forDisplay)) out['text/plain'] = inspectValue(value);
  return [out, metadata];
}

function inspectValue(value) {
  return util.inspect(value, { colors: false, depth: 2 });
}

function sendDisplay(data, opts) {
  opts = opts || {};
  message({
    type: 'display',
    data,
    metadata: opts.metadata || {},
    display_id: opts.display_id ?? opts.displayId ?? null,
    update: !!opts.update,
  });
}

function display(obj, opts) {
  const [data, metadata] = bundleOf(obj, { forDisplay: true });
  sendDisplay(data, { metadata, ...(opts || {}) });
}
const mimeHelper = (mime, convert) =>
  function helper(value, opts) {
    sendDisplay({ [mime]: convert(value) }, opts);
  };
display.html = mimeHelper('text/html', String);
display.markdown = mimeHelper('text/markdown', String);
display.text = mimeHelper('text/plain', String);
display.svg = mimeHelper('image/svg+xml', String);
display.latex = mimeHelper('text/latex', String);
display.png = mimeHelper('image/png', toBase64);
display.jpeg = mimeHelper('image/jpeg', toBase64);
display.gif = mimeHelper('image/gif', toBase64);
display.webp = mimeHelper('image/webp', toBase64);
display.json = mimeHelper('application/json', jsonValue);
display.update = function update(obj, displayId) {
  display(obj, { display_id: displayId, update: true });
};

const MIME_BY_EXT = {
  '.csv': 'text/csv', '.tsv': 'text/tab-separated-values', '.txt': 'text/plain', '.json': 'application/json',
  '.html': 'text/html', '.htm': 'text/html', '.md': 'text/markdown', '.png': 'image/png', '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg', '.gif': 'image/gif', '.webp': 'image/webp', '.svg': 'image/svg+xml',
  '.pdf': 'application/pdf', '.zip': 'application/zip', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.cjs': 'text/javascript', '.ts': 'text/typescript', '.xml': 'application/xml',
};
display.file = function file(p, mime) {
  const abs = path.resolve(String(p));
  message({ type: 'file', path: abs, mime: mime || MIME_BY_EXT[path.extname(abs).toLowerCase()] || 'application/octet-stream' });
};

function clear_output(wait) {
  message({ type: 'clear_output', wait: !!wait });
}

// input(prompt) -> Promise<string>, answered by the host's input_reply.
let pendingInput = null;
function input(promptText, opts) {
  const exec = current;
  if (!exec) return Promise.reject(new Error('input() can only be used while a cell is running'));
  if (!exec.allowStdin) {
    return Promise.reject(new Error('input() is not available: this frontend does not accept input requests (allow_stdin is false)'));
  }
  if (pendingInput) return Promise.reject(new Error('input() is already waiting for an answer'));
  return new Promise((resolve, reject) => {
    pendingInput = { resolve, reject, exec };
    message({ type: 'input_request', prompt: promptText === undefined ? '' : String(promptText), password: !!(opts && opts.password) });
  });
}
input.password = (promptText) => input(promptText, { password: true });

// prompt(message, default) and confirm(message), as Deno and browsers have them, but awaited:
// `await prompt('Name?', 'Ada')` is the answer, or the default when it is empty, or null when
// this execution takes no input (allow_stdin false); `await confirm('Go on?')` is true for
// y or yes (any case), false otherwise and when no input can be asked for.
function prompt(message, defaultValue) {
  const exec = current;
  if (exec && !exec.allowStdin) return Promise.resolve(null);
  const text = message === undefined ? 'Prompt' : String(message);
  const def = defaultValue === undefined || defaultValue === null ? '' : String(defaultValue);
  return input(`${text} ${def ? `[${def}] ` : ''}`).then((answer) => answer || def);
}
function confirm(message) {
  const exec = current;
  if (exec && !exec.allowStdin) return Promise.resolve(false);
  const text = message === undefined ? 'Confirm' : String(message);
  return input(`${text} [y/N] `).then((answer) => /^\s*y(es)?\s*$/i.test(answer));
}

function defineGlobal(name, value) {
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
}
defineGlobal('require', userRequire);
defineGlobal(IMPORT_FN, userImport);
defineGlobal('display', display);
defineGlobal('clear_output', clear_output);
defineGlobal('input', input);
// Jupyter comms (spindle_comm.js beside this file in the run directory), loaded on first use.
let commsLoaded = null;
function comms() {
  if (!commsLoaded) commsLoaded = require(path.join(path.dirname(BOOTSTRAP_FILE), 'spindle_comm.js'))({ message, sendDone, reply });
  return commsLoaded;
}
Object.defineProperty(globalThis, 'comm', { get: () => comms().api, set(v) { Object.defineProperty(globalThis, 'comm', { value: v, writable: true, configurable: true }); }, configurable: true, enumerable: false });
defineGlobal('prompt', prompt);
defineGlobal('confirm', confirm);
process.argv.splice(1);

// ---------------------------------------------------------------------------------------------
// The evaluator

let inspectorSession = null;
try {
  const inspector = require('inspector');
  inspectorSession = new inspector.Session();
  inspectorSession.connect();
} catch (_) {
  inspectorSession = null; // Node built without the inspector: plain vm fallback below
}

// Commands that V8 answers synchronously (everything but awaited evaluation).
function postSync(method, params) {
  let out = null;
  inspectorSession.post(method, params, (err, res) => {
    out = { err, res };
  });
  if (!out) throw new Error(`inspector: ${method} did not answer synchronously`);
  if (out.err) throw out.err;
  return out.res;
}

const SINK = Symbol.for('spindle.sink');
let sunk;
Object.defineProperty(globalThis, SINK, {
  value: (v) => {
    sunk = v;
  },
  enumerable: false,
});
const SINK_FN = 'function () { "use strict"; globalThis[Symbol.for("spindle.sink")](this); }';

// The real value behind an inspector RemoteObject.
function remoteValue(ro) {
  if (!ro) return undefined;
  if (ro.objectId) {
    sunk = undefined;
    postSync('Runtime.callFunctionOn', { objectId: ro.objectId, functionDeclaration: SINK_FN, silent: true });
    const v = sunk;
    sunk = undefined;
    return v;
  }
  if (ro.unserializableValue !== undefined) {
    const u = ro.unserializableValue;
    if (u === '-0') return -0;
    if (u === 'NaN') return NaN;
    if (u === 'Infinity') return Infinity;
    if (u === '-Infinity') return -Infinity;
    if (/^-?\d+n$/.test(u)) return BigInt(u.slice(0, -1));
  }
  if (ro.type === 'undefined') return undefined;
  return ro.value;
}

// Evaluate a side-effect-free expression (completion, inspection): {ok, value}.
function peek(expr) {
  // `require('x')` is a call, hence a side effect for the inspector; a built-in or an already
  // loaded module is safe to hand out.
  const req = /^require\(\s*(['"])([^'"]+)\1\s*\)$/.exec(expr);
  if (req) {
    try {
      const name = req[2];
      if (Module.isBuiltin(name) || userRequire.resolve(name) in Module._cache) return { ok: true, value: userRequire(name) };
    } catch (_) {
      // not resolvable: nothing to offer
    }
    return { ok: false };
  }
  if (!inspectorSession) return { ok: false };
  try {
    const r = postSync('Runtime.evaluate', {
      expression: expr,
      throwOnSideEffect: true,
      timeout: 500,
      silent: true,
      objectGroup: 'spindle-peek',
    });
    if (r.exceptionDetails) return { ok: false };
    return { ok: true, value: remoteValue(r.result) };
  } catch (_) {
    return { ok: false };
  } finally {
    try {
      postSync('Runtime.releaseObjectGroup', { objectGroup: 'spindle-peek' });
    } catch (_) {
      // nothing to release
    }
  }
}

const AsyncFunction = (async () => {}).constructor;

function compiles(src) {
  try {
    new AsyncFunction(src); // eslint-disable-line no-new
    return true;
  } catch (_) {
    return false;
  }
}

// `{a: 1}` alone is an object, as in Node's REPL, not a block.
function prepare(code) {
  let c = rewriteImports(code);
  if (/^\s*\{/.test(c) && /\}\s*;?\s*$/.test(c)) {
    const wrapped = `(${c.replace(/;\s*$/, '')}\n)`;
    if (compiles(wrapped)) c = wrapped;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Executions

let current = null; // the execution in flight
let execSeq = 0;
let execToken = 0; // tells executions apart for the interrupt worker (counts may repeat)

// Interrupts. SIGINT reaches the main thread's handler only when its event loop is free (an
// awaiting cell). A busy main thread (`while (true) {}`, before or after an `await`) is stopped
// by a small worker thread that hears the same SIGINT and, if the main thread has not reacted
// within 100 ms, asks the inspector to terminate the running JavaScript. Without such a worker
// (no inspector, no signal binding) the synchronous part of a cell runs under `vm`'s SIGINT
// watchdog instead; the two cannot be mixed: the watchdog leaves SIGINT at its default action
// when another thread still holds a libuv SIGINT handle.
let interruptWorker = null; // Worker, or false when unavailable
let workerMode = 'starting'; // 'starting' | 'armed' | 'unavailable'

const WORKER_SOURCE = `
'use strict';
const { workerData, parentPort } = require('worker_threads');
const state = new Int32Array(workerData.buffer);
process.noDeprecation = true;
let Signal = null;
try { Signal = process.binding('signal_wrap').Signal; } catch (_) {}
if (!Signal) {
  parentPort.postMessage('unavailable');
} else {
  const inspector = require('inspector');
  let session = null;
  // Only when the main thread did not see the SIGINT itself: then it is stuck in JavaScript
  // (a busy cell, or a busy timer between cells).
  const terminate = (seen) => {
    if (Atomics.load(state, 0) !== seen) return;
    if (Atomics.load(state, 1) !== 0) { setTimeout(terminate, 5, seen); return; }
    if (!session) { session = new inspector.Session(); session.connectToMainThread(); }
    // Say whose JavaScript this stops: the main thread is stuck, so [2] cannot change under us.
    Atomics.store(state, 4, Atomics.load(state, 2));
    Atomics.store(state, 3, 1);
    session.post('Runtime.terminateExecution');
  };
  const handle = new Signal();
  handle.onsignal = () => {
    setTimeout(terminate, workerData.graceMs, Atomics.load(state, 0));
  };
  if (handle.start(2) === 0) parentPort.postMessage('armed');
  else parentPort.postMessage('unavailable');
}
`;

function startInterruptWorker() {
  if (interruptWorker !== null) return;
  if (!inspectorSession) {
    interruptWorker = false;
    workerMode = 'unavailable';
    return;
  }
  try {
    const { Worker } = require('worker_threads');
    interruptWorker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { buffer: interruptState.buffer, graceMs: 100 },
      stdout: true, // its output is not the user's
      stderr: true,
    });
    interruptWorker.unref();
    interruptWorker.on('message', (m) => {
      workerMode = m === 'armed' ? 'armed' : 'unavailable';
    });
    interruptWorker.on('error', () => {
      workerMode = 'unavailable';
    });
  } catch (_) {
    interruptWorker = false;
    workerMode = 'unavailable';
  }
}

function evaluate(expression, callback) {
  if (!inspectorSession) {
    fallbackEval(expression, callback);
    return;
  }
  inspectorSession.post(
    'Runtime.evaluate',
    { expression, replMode: true, awaitPromise: true, objectGroup: 'spindle', generatePreview: false },
    callback,
  );
}

// Runs the pending evaluation; only used under the vm watchdog (see above).
const EVAL_TRAMPOLINE = new vm.Script('globalThis[Symbol.for("spindle.eval")]()', { filename: 'spindle:eval' });
let evalArgs = null;
Object.defineProperty(globalThis, Symbol.for('spindle.eval'), {
  value: () => {
    const { expression, callback } = evalArgs;
    evalArgs = null;
    evaluate(expression, callback);
  },
  enumerable: false,
});

// Without the inspector: plain scripts; cells with `await` run in an async function.
function fallbackEval(expression, callback) {
  let value;
  try {
    value = vm.runInThisContext(expression, { displayErrors: false });
  } catch (e) {
    if (!(e instanceof SyntaxError) || !/await/.test(e.message)) {
      callback(null, { thrown: e });
      return;
    }
    try {
      value = vm.runInThisContext(`(async () => {\n${expression}\n})()`, { displayErrors: false });
    } catch (e2) {
      callback(null, { thrown: e2 });
      return;
    }
  }
  Promise.resolve(value).then(
    (v) => callback(null, { value: v }),
    (e) => callback(null, { thrown: e }),
  );
}

function execute(req) {
  const exec = {
    id: String(req.id),
    silent: !!req.silent,
    allowStdin: req.allow_stdin !== false,
    userExpressions: req.user_expressions && typeof req.user_expressions === 'object' ? req.user_expressions : {},
    count: req.execution_count ?? ++execSeq,
    code: String(req.code ?? ''),
  };
  exec.file = cellName(exec.count);
  exec.token = ++execToken;
  current = exec;
  Atomics.store(interruptState, 2, exec.token);
  let prepared;
  try {
    prepared = prepare(exec.code);
  } catch (e) {
    prepared = exec.code; // the evaluator will report the real problem
  }
  const expression = `${prepared}\n//# sourceURL=${exec.file}`;
  const callback = (err, res) => onEvaluated(exec, prepared, err, res);
  if (workerMode !== 'unavailable') {
    evaluate(expression, callback);
    return;
  }
  evalArgs = { expression, callback };
  try {
    EVAL_TRAMPOLINE.runInThisContext({ breakOnSigint: true });
  } catch (e) {
    if (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') interrupted(exec);
    else failed(exec, e);
  }
}

function onEvaluated(exec, prepared, err, res) {
  if (current !== exec) return;
  if (err) {
    // Terminated by the interrupt worker (or the watchdog) while running synchronously.
    if (/terminated/i.test(String(err.message))) return interrupted(exec);
    return failed(exec, err);
  }
  let value;
  if (inspectorSession) {
    if (res.exceptionDetails) {
      const d = res.exceptionDetails;
      const where = d.scriptId ? { file: exec.file, code: prepared, line: d.lineNumber, column: d.columnNumber } : null;
      return failed(exec, remoteValue(d.exception), where);
    }
    value = remoteValue(res.result);
  } else {
    if ('thrown' in res) return failed(exec, res.thrown);
    value = res.value;
  }
  // A cell that ends in a promise ends when it settles.
  if (value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function') {
    let then;
    try {
      then = Promise.resolve(value);
    } catch (e) {
      return failed(exec, e);
    }
    then.then(
      (v) => finishWithValue(exec, v),
      (e) => {
        if (current === exec) failed(exec, e);
      },
    );
    return;
  }
  finishWithValue(exec, value);
}

function finishWithValue(exec, value) {
  if (current !== exec) return;
  if (value !== undefined && !exec.silent) {
    try {
      const [data, metadata] = bundleOf(value, { forDisplay: false });
      message({ type: 'result', data, metadata });
    } catch (e) {
      return failed(exec, e);
    }
  }
  // One turn of the event loop first, so that a promise the cell left rejected is reported
  // (as an unhandled rejection) within the cell.
  setImmediate(() => finish(exec, 'ok'));
}

function failed(exec, err, where) {
  if (current !== exec) return;
  message(errorContent(err, where));
  // A subprocess killed by the same SIGINT (execSync and friends) means the cell was interrupted.
  const bySigint = err !== null && typeof err === 'object' && err.signal === 'SIGINT';
  finish(exec, bySigint ? 'interrupted' : 'error');
}

function interrupted(exec) {
  if (current !== exec) return;
  message({
    type: 'error',
    ename: 'Interrupted',
    evalue: 'Script execution was interrupted by SIGINT',
    traceback: ['Interrupted: Script execution was interrupted by SIGINT'],
  });
  finish(exec, 'interrupted');
}

function finish(exec, status) {
  if (current !== exec) return;
  if (pendingInput && pendingInput.exec === exec) {
    const p = pendingInput;
    pendingInput = null;
    p.reject(new Error(status === 'interrupted' ? 'interrupted' : 'the cell finished before input arrived'));
  }
  let exitStatus = status === 'ok' ? 0 : 1;
  if (status === 'ok' && typeof process.exitCode === 'number' && process.exitCode !== 0) exitStatus = process.exitCode;
  process.exitCode = undefined;
  const ue = status === 'interrupted' ? {} : evaluateUserExpressions(exec.userExpressions);
  current = null;
  Atomics.store(interruptState, 2, 0);
  if (inspectorSession) {
    try {
      postSync('Runtime.releaseObjectGroup', { objectGroup: 'spindle' });
    } catch (_) {
      // nothing held
    }
  }
  sendDone(exec.id, status, exitStatus, ue);
  pump();
}

function evaluateUserExpressions(exprs) {
  const out = {};
  for (const [name, expr] of Object.entries(exprs || {})) {
    try {
      let value;
      if (inspectorSession) {
        const r = postSync('Runtime.evaluate', { expression: String(expr), objectGroup: 'spindle' });
        if (r.exceptionDetails) throw remoteValue(r.exceptionDetails.exception);
        value = remoteValue(r.result);
      } else {
        value = vm.runInThisContext(String(expr));
      }
      const [data, metadata] = bundleOf(value, { forDisplay: false });
      out[name] = { status: 'ok', data, metadata };
    } catch (e) {
      const c = errorContent(e);
      out[name] = { status: 'error', ename: c.ename, evalue: c.evalue, traceback: c.traceback };
    }
  }
  return out;
}

// SIGINT while a cell awaits (or after the worker stopped a busy one) ends the cell; while
// idle it is ignored. When the worker stopped JavaScript that was not the current cell's (a
// busy timer between cells, or an earlier cell that has ended since), the SIGINT is spent on
// that: the cell that started meanwhile, typically the one queued behind the timer, runs on.
process.on('SIGINT', () => {
  Atomics.add(interruptState, 0, 1);
  if (Atomics.exchange(interruptState, 3, 0) === 1) {
    const stopped = Atomics.load(interruptState, 4);
    if (!current || stopped !== current.token) return;
  }
  if (current) interrupted(current);
});

// Errors outside the awaited flow of a cell.
process.on('uncaughtException', (err) => {
  const exec = current;
  if (exec) failed(exec, err);
  else message(errorContent(err));
});
process.on('unhandledRejection', (reason) => {
  const exec = current;
  if (exec) failed(exec, reason);
  else message(errorContent(reason));
});

// ---------------------------------------------------------------------------------------------
// Queries

function cpToIndex(s, cp) {
  let i = 0;
  for (let c = 0; c < cp && i < s.length; c++) {
    const code = s.charCodeAt(i);
    i += code >= 0xd800 && code <= 0xdbff && i + 1 < s.length ? 2 : 1;
  }
  return i;
}
function indexToCp(s, idx) {
  let c = 0;
  for (let i = 0; i < idx; c++) {
    const code = s.charCodeAt(i);
    i += code >= 0xd800 && code <= 0xdbff && i + 1 < s.length ? 2 : 1;
  }
  return c;
}

// The object expression before `end` (e.g. `a.b(c)[0]` in `a.b(c)[0].x`), or ''.
function objectExprBefore(code, end) {
  let i = end;
  const closers = { ')': '(', ']': '[' };
  for (;;) {
    while (i > 0 && isIdPart(code[i - 1])) i -= 1;
    const c = code[i - 1];
    if (c === ')' || c === ']') {
      let depth = 0;
      let j = i - 1;
      for (; j >= 0; j--) {
        if (code[j] === c) depth += 1;
        else if (code[j] === closers[c] && --depth === 0) break;
      }
      if (j < 0) break;
      i = j;
      continue;
    }
    if (c === '.' && code[i - 2] === '?') {
      i -= 2;
      continue;
    }
    if (c === '.' && code[i - 2] !== '.') {
      i -= 1;
      continue;
    }
    break;
  }
  return code.slice(i, end).trim();
}

const JS_KEYWORDS = (
  'await break case catch class const continue debugger default delete do else export extends false finally for ' +
  'function if import in instanceof let new null of return static super switch this throw true try typeof ' +
  'undefined var void while with yield async'
).split(' ');

function propertyNames(value) {
  const names = new Set();
  let o = value;
  if (o === null || o === undefined) return names;
  if (typeof o !== 'object' && typeof o !== 'function') o = Object(o);
  for (let depth = 0; o && depth < 32; depth++) {
    for (const k of Object.getOwnPropertyNames(o)) names.add(k);
    o = Object.getPrototypeOf(o);
  }
  return names;
}

function complete(req) {
  const code = String(req.code ?? '');
  const cursor = cpToIndex(code, Number(req.cursor_pos ?? code.length));
  let start = cursor;
  while (start > 0 && isIdPart(code[start - 1])) start -= 1;
  const prefix = code.slice(start, cursor);
  let candidates;
  const dot = code[start - 1] === '.' && code[start - 2] !== '.';
  if (dot) {
    const expr = objectExprBefore(code, start - (code[start - 2] === '?' ? 2 : 1));
    const r = expr ? peek(expr) : { ok: false };
    candidates = r.ok ? [...propertyNames(r.value)].filter((k) => /^[A-Za-z_$][\w$]*$/.test(k)) : [];
  } else {
    const names = new Set(JS_KEYWORDS);
    for (const k of propertyNames(globalThis)) names.add(k);
    if (inspectorSession) {
      try {
        for (const k of postSync('Runtime.globalLexicalScopeNames', {}).names) names.add(k);
      } catch (_) {
        // only globals then
      }
    }
    candidates = [...names].filter((k) => !k.startsWith('__spindle') && /^[A-Za-z_$][\w$]*$/.test(k));
  }
  const matches = candidates.filter((k) => k.startsWith(prefix)).sort((a, b) => {
    const pa = a.startsWith('_') ? 1 : 0;
    const pb = b.startsWith('_') ? 1 : 0;
    return pa - pb || (a < b ? -1 : a > b ? 1 : 0);
  });
  return { matches, cursor_start: indexToCp(code, start), cursor_end: indexToCp(code, cursor), metadata: {} };
}

function inspectAt(req) {
  const code = String(req.code ?? '');
  const cursor = cpToIndex(code, Number(req.cursor_pos ?? code.length));
  let end = cursor;
  while (end < code.length && isIdPart(code[end])) end += 1;
  // On `f(` show `f`.
  if (end === cursor && code[end - 1] === '(') end -= 1;
  const expr = objectExprBefore(code, end);
  if (!expr) return { found: false, data: {}, metadata: {} };
  const r = peek(expr);
  if (!r.ok) return { found: false, data: {}, metadata: {} };
  const v = r.value;
  const lines = [`${expr}: ${v === null ? 'null' : typeof v}`];
  if (typeof v === 'function') {
    const src = Function.prototype.toString.call(v);
    lines.push(Number(req.detail_level) > 0 ? src : src.split('\n')[0]);
  } else {
    lines.push(inspectValue(v));
  }
  return { found: true, data: { 'text/plain': lines.join('\n') }, metadata: {} };
}

function isComplete(req) {
  const raw = String(req.code ?? '');
  if (!raw.trim()) return { status: 'complete' };
  let code;
  try {
    code = rewriteImports(raw);
  } catch (_) {
    code = raw;
  }
  const { stack, unterminated, mismatch } = lex(code);
  const lastLine = raw.split('\n').pop();
  const indentOf = () => {
    const lead = (lastLine.match(/^\s*/) || [''])[0];
    return /[{([]\s*$/.test(lastLine) ? `${lead}  ` : lead;
  };
  if (mismatch) return { status: 'invalid' };
  if (unterminated === 'template' || unterminated === 'comment' || stack.length) {
    return { status: 'incomplete', indent: indentOf() };
  }
  if (unterminated) return { status: 'invalid' };
  const verdict = (err) => {
    if (!err) return 'complete';
    return /Unexpected end of input|Unterminated template/.test(err.message) ? 'incomplete' : 'invalid';
  };
  let err = null;
  try {
    new vm.Script(code); // eslint-disable-line no-new
  } catch (e) {
    err = e;
  }
  if (err && /await|Illegal return/.test(err.message)) {
    err = null;
    try {
      new vm.Script(`(async () => {\n${code}\n})`); // eslint-disable-line no-new
    } catch (e) {
      err = e;
    }
  }
  const status = verdict(err);
  return status === 'incomplete' ? { status, indent: indentOf() } : { status };
}

// ---------------------------------------------------------------------------------------------
// Requests: JSON lines on $SPINDLE_REQ, read on the thread pool (no `net` to load).

const queue = [];

function pump() {
  while (!current && queue.length) {
    const req = queue.shift();
    try {
      handle(req);
    } catch (e) {
      // A bug here must not leave the host waiting.
      if (current) failed(current, e);
      else if (req && req.id !== undefined) {
        message(errorContent(e));
        sendDone(String(req.id), 'error', 1);
      }
    }
  }
}

function handle(req) {
  switch (req.op) {
    case 'execute':
      execute(req);
      break;
    case 'complete':
      reply(String(req.id), complete(req));
      break;
    case 'inspect':
      reply(String(req.id), inspectAt(req));
      break;
    case 'is_complete':
      reply(String(req.id), isComplete(req));
      break;
    case 'comm':
    case 'comm_info':
      comms().handle(req);
      break;
    default:
      if (req.id !== undefined) {
        message({ type: 'error', ename: 'SpindleError', evalue: `unknown request ${JSON.stringify(req.op)}`, traceback: [] });
        sendDone(String(req.id), 'error', 1);
      }
  }
}

function onRequestLine(line) {
  if (!line.trim()) return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    message({ type: 'error', ename: 'SpindleError', evalue: `bad request line: ${e.message}`, traceback: [] });
    return;
  }
  if (!req || typeof req !== 'object') return;
  if (req.op === 'input_reply') {
    const p = pendingInput;
    pendingInput = null;
    if (p) p.resolve(String(req.value ?? ''));
    return;
  }
  queue.push(req);
  pump();
}

// O_RDWR: opening never blocks and we never see EOF between the host's writes.
const REQ_FD = fs.openSync(env.SPINDLE_REQ, fs.constants.O_RDWR);
const reqBuf = Buffer.allocUnsafe(256 * 1024);
const reqDecoder = new StringDecoder('utf8');
let reqPending = '';

function readRequests() {
  fs.read(REQ_FD, reqBuf, 0, reqBuf.length, null, (err, n) => {
    if (err) {
      if (err.code === 'EAGAIN' || err.code === 'EINTR') {
        setTimeout(readRequests, 5);
        return;
      }
      process.exit(1);
    }
    if (n === 0) {
      process.exit(0); // the host is gone
    }
    reqPending += reqDecoder.write(reqBuf.subarray(0, n));
    const lines = reqPending.split('\n');
    reqPending = lines.pop();
    readRequests(); // keep reading whatever the requests do
    for (const line of lines) onRequestLine(line);
  });
}

message({ type: 'ready', language_version: process.versions.node, pid: process.pid });
// Before the first request can arrive, so that even a first cell that never yields can be
// interrupted (the worker arms itself on its own thread shortly after).
startInterruptWorker();
readRequests();
