// Spindle's comm registry for Node.js: the kernel side of the Jupyter comm protocol.
//
// The kernel writes this file into the session's run directory beside the bootstrap, which
// loads it on first use (a comm request, or the first touch of the `comm` global):
//
//   const c = comm.open('my.target', { hello: 1 });   // comm_open to the frontend
//   c.onMsg((msg) => { ... msg.content.data ... });    // comm_msg from the frontend
//   c.send({ value: 2 }, {}, [Buffer.from('raw')]);    // comm_msg, with binary buffers
//   c.close();                                         // comm_close
//   comm.registerTarget('my.target', (c, msg) => { ... });  // comms the frontend opens
//
// Requests from the host: {"op":"comm","id":…,"msg_type":…,"content":{…},"metadata":{…},
// "buffers":[base64],"parent":{header}} runs the handler (synchronously; its output belongs to
// the request), {"op":"comm_info","id":…,"target_name":…} lists the open comms. A message for an
// unknown comm id is logged to stderr and ignored; a comm_open for a target nobody registered
// is logged and answered with comm_close (as ipykernel does).
'use strict';

const crypto = require('crypto');

module.exports = function makeComms({ message, sendDone, reply }) {
  const targets = new Map();
  const comms = new Map();

  function toBase64(b) {
    if (Buffer.isBuffer(b)) return b.toString('base64');
    if (ArrayBuffer.isView(b)) return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
    if (b instanceof ArrayBuffer) return Buffer.from(b).toString('base64');
    return Buffer.from(String(b)).toString('base64');
  }

  function publish(comm, msgType, data, metadata, buffers) {
    const msg = {
      type: 'comm',
      msg_type: msgType,
      comm_id: comm.commId,
      data: data || {},
      metadata: metadata || {},
      buffers: (buffers || []).map(toBase64),
    };
    if (msgType === 'comm_open') msg.target_name = comm.targetName;
    message(msg);
  }

  class Comm {
    constructor(targetName, commId) {
      this.targetName = String(targetName);
      this.commId = commId || crypto.randomUUID().replace(/-/g, '');
      this.closed = false;
      this.msgCallback = null;
      this.closeCallback = null;
    }
    send(data, metadata, buffers) {
      if (this.closed) throw new Error(`comm ${this.commId} is closed`);
      publish(this, 'comm_msg', data, metadata, buffers);
    }
    close(data, metadata, buffers) {
      if (this.closed) return;
      this.closed = true;
      comms.delete(this.commId);
      publish(this, 'comm_close', data, metadata, buffers);
    }
    onMsg(fn) {
      this.msgCallback = fn;
    }
    onClose(fn) {
      this.closeCallback = fn;
    }
  }

  const api = {
    /** Open a comm to the frontend's `targetName`. */
    open(targetName, data, metadata, buffers) {
      const c = new Comm(targetName);
      comms.set(c.commId, c);
      publish(c, 'comm_open', data, metadata, buffers);
      return c;
    },
    /** Call `fn(comm, msg)` when the frontend opens a comm with this target. */
    registerTarget(name, fn) {
      if (typeof fn !== 'function') throw new TypeError('registerTarget needs a function');
      targets.set(String(name), fn);
    },
    unregisterTarget(name) {
      return targets.delete(String(name));
    },
    /** The open comms, by id. */
    get comms() {
      return new Map(comms);
    },
    Comm,
  };

  function log(text) {
    process.stderr.write(`${text}\n`);
  }

  function handle(req) {
    const id = String(req.id);
    if (req.op === 'comm_info') {
      const out = {};
      for (const [cid, c] of comms) {
        if (!req.target_name || c.targetName === req.target_name) out[cid] = { target_name: c.targetName };
      }
      reply(id, { comms: out });
      return;
    }
    const content = req.content && typeof req.content === 'object' ? req.content : {};
    const msg = {
      header: req.parent || {},
      msg_type: req.msg_type,
      metadata: req.metadata || {},
      content,
      buffers: (req.buffers || []).map((b) => Buffer.from(String(b), 'base64')),
    };
    let status = 'ok';
    try {
      const cid = String(content.comm_id || '');
      if (req.msg_type === 'comm_open') {
        const fn = targets.get(String(content.target_name));
        const c = new Comm(content.target_name, cid);
        comms.set(cid, c);
        if (!fn) {
          log(`No such comm target registered: ${content.target_name}`);
          c.close();
        } else {
          try {
            fn(c, msg);
          } catch (e) {
            log(`Exception opening comm with target: ${content.target_name}: ${e && e.stack ? e.stack : e}`);
            c.close();
          }
        }
      } else if (req.msg_type === 'comm_msg' || req.msg_type === 'comm_close') {
        const c = comms.get(cid);
        if (!c) {
          log(`No such comm: ${cid}`);
        } else if (req.msg_type === 'comm_msg') {
          if (c.msgCallback) c.msgCallback(msg);
        } else {
          c.closed = true;
          comms.delete(cid);
          if (c.closeCallback) c.closeCallback(msg);
        }
      } else {
        throw new Error(`unknown comm message type ${JSON.stringify(req.msg_type)}`);
      }
    } catch (e) {
      log(`Exception in ${req.msg_type}: ${e && e.stack ? e.stack : e}`);
      status = 'error';
    }
    sendDone(id, status, status === 'ok' ? 0 : 1);
  }

  return { api, handle };
};
