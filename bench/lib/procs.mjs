// Process plumbing for the bench: a cleanup registry (every process we start is killed at the end, also on Ctrl-C
// and on errors), spawning pinned helpers, free ports, and /proc readers (CPU of a process tree, RSS, other work).
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

// ---- cleanup registry ---------------------------------------------------------------------------------------
const live = new Map(); // pid -> { name, child }
const dirs = new Set();
let cleaning = false;

/** Kill every registered process group (SIGTERM, then SIGKILL), remove temp dirs. Safe to call twice. */
export async function cleanupAll() {
  if (cleaning) return;
  cleaning = true;
  const entries = [...live.entries()];
  for (const [pid] of entries) signalGroup(pid, 'SIGTERM');
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && [...live.keys()].some(isAlive)) await sleep(50);
  for (const [pid] of live) if (isAlive(pid)) signalGroup(pid, 'SIGKILL');
  live.clear();
  if (!process.env.BENCH_KEEP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

function cleanupSync() {
  for (const [pid] of live) signalGroup(pid, 'SIGKILL');
  live.clear();
  if (!process.env.BENCH_KEEP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

function signalGroup(pid, sig) {
  // Every child is started detached, so it leads its own process group: the group holds it and its children
  // (nginx's worker) and nothing else.
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      /* gone */
    }
  }
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return readStat(pid)?.state !== 'Z';
  } catch {
    return false;
  }
}

let handlersInstalled = false;
export function installCleanupHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const onSignal = (sig) => {
    process.stderr.write(`\nbench: ${sig}, stopping everything it started…\n`);
    cleanupAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  process.on('exit', cleanupSync);
  process.on('uncaughtException', (err) => {
    process.stderr.write(`bench: ${err?.stack ?? err}\n`);
    cleanupAll().finally(() => process.exit(1));
  });
  process.on('unhandledRejection', (err) => {
    process.stderr.write(`bench: ${err?.stack ?? err}\n`);
    cleanupAll().finally(() => process.exit(1));
  });
}

export function tempDir(prefix = 'token-sidecar-bench-') {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.add(d);
  return d;
}

/**
 * Start a process in its own process group, optionally pinned to `cpus` ("0", "1", "0,1"), registered for cleanup.
 * stdout: 'pipe' (default) or a file path (appended; the file can be truncated while the process writes).
 */
export function startProcess(name, cmd, args, { cpus, env, stdoutFile, cwd } = {}) {
  const argv = cpus ? ['-c', cpus, cmd, ...args] : args;
  const bin = cpus ? 'taskset' : cmd;
  let outFd;
  if (stdoutFile) outFd = openSync(stdoutFile, 'a');
  const child = spawn(bin, argv, {
    cwd,
    env: { ...process.env, ...env },
    detached: true,
    stdio: ['ignore', outFd ?? 'pipe', 'pipe'],
  });
  if (outFd !== undefined) closeSync(outFd);
  live.set(child.pid, { name, child });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  exited.then(() => live.delete(child.pid));
  const proc = {
    name,
    child,
    pid: child.pid,
    exited,
    stderr: () => stderr,
    /** Resolve with the first stdout JSON line containing `key` (helpers print {"ready":true,...}). */
    waitJson(key = 'ready', timeoutMs = 15000) {
      return new Promise((resolve, reject) => {
        let buf = '';
        const timer = setTimeout(() => reject(new Error(`${name}: no "${key}" line within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs);
        const onData = (d) => {
          buf += d.toString();
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!line.includes(`"${key}"`)) continue;
            try {
              const obj = JSON.parse(line);
              clearTimeout(timer);
              child.stdout.off('data', onData);
              child.stdout.resume(); // keep draining
              resolve(obj);
              return;
            } catch {
              /* not JSON */
            }
          }
        };
        child.stdout.on('data', onData);
        exited.then(({ code, signal }) => {
          clearTimeout(timer);
          reject(new Error(`${name} exited (${code ?? signal}) before "${key}"; stderr: ${stderr}`));
        });
      });
    },
    async stop(sig = 'SIGTERM', timeoutMs = 3000) {
      if (!live.has(child.pid)) return;
      signalGroup(child.pid, sig);
      const t = sleep(timeoutMs).then(() => 'timeout');
      if ((await Promise.race([exited, t])) === 'timeout') {
        signalGroup(child.pid, 'SIGKILL');
        await exited;
      }
    },
  };
  return proc;
}

/** A free loopback TCP port (asked from the kernel, then released: use it at once). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---- /proc ---------------------------------------------------------------------------------------------------
/** Fields of /proc/PID/stat we use; times in seconds. */
export function readStat(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  const f = text.slice(close + 2).split(' '); // f[0] = field 3 (state)
  const n = (i) => Number(f[i - 3]);
  return {
    pid,
    comm,
    state: f[0],
    ppid: n(4),
    flags: n(9),
    utime: n(14) / CLK_TCK,
    stime: n(15) / CLK_TCK,
    cutime: n(16) / CLK_TCK,
    cstime: n(17) / CLK_TCK,
    starttime: n(22),
  };
}

const PF_KTHREAD = 0x00200000;

export function allPids() {
  return readdirSync('/proc')
    .filter((d) => d.charCodeAt(0) >= 48 && d.charCodeAt(0) <= 57)
    .map(Number);
}

function snapshotAll() {
  const m = new Map();
  for (const pid of allPids()) {
    const s = readStat(pid);
    if (s) m.set(pid, s);
  }
  return m;
}

function descendantsIn(stats, root) {
  const children = new Map();
  for (const s of stats.values()) {
    if (!children.has(s.ppid)) children.set(s.ppid, []);
    children.get(s.ppid).push(s.pid);
  }
  const out = new Set([root]);
  const stack = [root];
  while (stack.length) {
    for (const c of children.get(stack.pop()) ?? []) {
      if (!out.has(c)) {
        out.add(c);
        stack.push(c);
      }
    }
  }
  return out;
}

/** The pids of a process and all its descendants. */
export function treePids(root) {
  return [...descendantsIn(snapshotAll(), root)];
}

/** CPU seconds (user+system, reaped children included) of a process tree. */
export function treeCpu(pids) {
  let sum = 0;
  for (const pid of pids) {
    const s = readStat(pid);
    if (s) sum += s.utime + s.stime + s.cutime + s.cstime;
  }
  return sum;
}

/** Summed VmRSS of a process tree, in bytes. */
export function treeRss(pids) {
  let sum = 0;
  for (const pid of pids) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) sum += Number(m[1]) * 1024;
    } catch {
      /* gone */
    }
  }
  return sum;
}

function stealSeconds() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  return Number(line[8] ?? 0) / CLK_TCK;
}

/**
 * Other work on the machine: CPU time of every user-space process that is not this bench or one of its
 * descendants, plus hypervisor steal. Take `otherWorkMark()` before a repetition and `otherWorkSince(mark)`
 * after it. Processes that started and ended inside the window are counted through their parent's cutime/cstime
 * (charged when reaped). Kernel threads are left out: under our own load they are mostly our loopback softirq.
 */
export function otherWorkMark() {
  return { stats: snapshotAll(), steal: stealSeconds() };
}

export function otherWorkSince(mark) {
  const now = snapshotAll();
  const mine = descendantsIn(now, process.pid);
  for (const p of descendantsIn(mark.stats, process.pid)) mine.add(p);
  // Our ancestors (npm, the shell) are idle; leave them out too so `npm run bench` does not count itself.
  let p = process.ppid;
  while (p > 1) {
    mine.add(p);
    p = now.get(p)?.ppid ?? 0;
  }
  // Conservation: Σ now − Σ before over foreign processes. A process that ended inside the window had its whole
  // life added to its parent's cutime when reaped, so its time at the mark is subtracted (it "moved" upwards).
  const t = (s) => s.utime + s.stime + s.cutime + s.cstime;
  const foreign = (s) => !mine.has(s.pid) && !(s.flags & PF_KTHREAD);
  let cpu = 0;
  const top = new Map();
  const add = (comm, d) => {
    cpu += d;
    top.set(comm, (top.get(comm) ?? 0) + d);
  };
  for (const s of now.values()) {
    if (!foreign(s)) continue;
    const before = mark.stats.get(s.pid);
    add(s.comm, before && before.starttime === s.starttime ? t(s) - t(before) : t(s));
  }
  for (const b of mark.stats.values()) {
    if (!foreign(b)) continue;
    const s = now.get(b.pid);
    if (!s || s.starttime !== b.starttime) add(b.comm, -t(b));
  }
  const topList = [...top.entries()].filter(([, d]) => d > 0.005).sort((a, b) => b[1] - a[1]).slice(0, 3);
  return { cpu: Math.max(0, cpu), steal: Math.max(0, stealSeconds() - mark.steal), top: topList.map(([c, d]) => [c, Math.round(d * 100) / 100]) };
}

/** Sample a process tree's RSS every `everyMs`; stop() returns the peak in bytes. */
export function rssSampler(pids, everyMs = 250) {
  let peak = treeRss(pids);
  const timer = setInterval(() => {
    const r = treeRss(pids);
    if (r > peak) peak = r;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const r = treeRss(pids);
      if (r > peak) peak = r;
      return peak;
    },
  };
}

/** Pin this process (the orchestrator) to a CPU, so it never runs beside the proxy under test. */
export function pinSelf(cpus) {
  try {
    execFileSync('taskset', ['-a', '-pc', cpus, String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
