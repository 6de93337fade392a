/**
 * Runs the shipped CLI (`node dist/token-sidecar.mjs start`, the bundle) as a real child process, as a pod would:
 * for fleet tests that need separate processes (separate memory, killable with SIGKILL).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { recordLines } from './log-capture.js';

const CLI = resolve(import.meta.dirname, '../../dist/token-sidecar.mjs');

export interface SidecarProcess {
  readonly pid: number;
  readonly proxyUrl: string;
  readonly adminUrl: string;
  /** Every stdout/stderr line so far (JSON log lines). */
  readonly lines: string[];
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function writeConfig(yaml: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ts-sidecar-'));
  const file = join(dir, 'routes.yaml');
  await writeFile(file, yaml);
  return file;
}

export async function startSidecarProcess(configFile: string, env: Record<string, string> = {}, startTimeoutMs = 15_000): Promise<SidecarProcess> {
  const child = spawn(process.execPath, [CLI, 'start', '--config', configFile], {
    env: { ...process.env, LOG_FORMAT: 'json', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => {
    running.delete(child);
    res(code);
  }));
  const lines: string[] = [];
  const listening = new Promise<{ proxy: string; admin: string }>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`sidecar did not start in ${startTimeoutMs} ms:\n${lines.join('\n')}`)), startTimeoutMs);
    const onLine = (line: string) => {
      lines.push(line);
      recordLines(line);
      if (!line.includes('"event":"listening"')) return;
      const parsed = JSON.parse(line) as { proxy: string; admin: string };
      clearTimeout(timer);
      res(parsed);
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buffered = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          onLine(buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
        }
      });
    }
    void exited.then((code) => {
      clearTimeout(timer);
      rej(new Error(`sidecar exited with ${code} before listening:\n${lines.join('\n')}`));
    });
  });
  const { proxy, admin } = await listening;
  return {
    pid: child.pid ?? -1,
    proxyUrl: proxy,
    adminUrl: admin,
    lines,
    kill: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
