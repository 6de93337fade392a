#!/usr/bin/env node
/** token-sidecar CLI: start | validate | token ROUTE | demo | webhook. Exit codes: 0 ok, 1 bad config or usage, 2 runtime failure. */
import { authSummary } from '../config/describe.js';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { loadConfigFile, type LoadResult } from '../config/load.js';
import { createLogger } from '../log.js';
import { createLoggers } from './loggers.js';
import { Sidecar } from '../sidecar.js';
import { createTokenKeeping, type TokenKeeping } from '../wiring.js';
import { isSidecarError } from '../core/errors.js';
import { ConfigWatcher, RELOAD_POLL_MS } from '../config/watch.js';

const HELP = `token-sidecar — inject short-lived OAuth2 access tokens into an app's calls to vendor APIs

Usage: token-sidecar <command> [options]

Commands:
  start [--config FILE]          run the proxy (the default command)
  validate [--config FILE]       check the config and every secret reference; print all problems; exit 0 or 1
  token ROUTE [--config FILE]    get ROUTE's token as the proxy would and print its metadata (never the token)
  demo                           a self-contained tour: local token endpoint, echo vendor, the sidecar between
  webhook [options]              run the Kubernetes admission webhook that injects the sidecar (see --help)

Options:
  --config FILE   routes.yaml to use (default: $TOKEN_SIDECAR_CONFIG, else ./routes.yaml)
  -h, --help      show help
  --version       print the version

Environment: LOG_LEVEL (info), LOG_FORMAT=json (force JSON logs on a terminal), TOKEN_SIDECAR_CONFIG.
Exit codes: 0 ok, 1 bad config or usage, 2 runtime failure.`;

async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  const command = first === undefined || first.startsWith('-') ? 'start' : first;
  const args = first === undefined || first.startsWith('-') ? argv : rest;
  if (command === 'webhook') {
    const { webhookCommand } = await import('../webhook/cli.js');
    return webhookCommand(args);
  }
  if (command === 'demo') {
    if (args.includes('--help') || args.includes('-h')) return print('token-sidecar demo — run a local token endpoint, an echo vendor and the sidecar, and show what the vendor receives. Offline; no arguments.', 0);
    const { runDemo } = await import('./demo.js');
    return runDemo();
  }
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean' } },
    });
  } catch (err) {
    return print(`${(err as Error).message}\n\n${HELP}`, 1, true);
  }
  const { values, positionals } = parsed;
  if (values.help || command === 'help') return print(HELP, 0);
  if (values.version) return print(await version(), 0);
  const configFile = values.config ?? process.env['TOKEN_SIDECAR_CONFIG'] ?? 'routes.yaml';
  switch (command) {
    case 'start':
      return start(configFile);
    case 'validate':
      return validate(configFile);
    case 'token': {
      const route = positionals[0];
      if (!route) return print('usage: token-sidecar token ROUTE [--config FILE]', 1, true);
      return token(configFile, route);
    }
    default:
      return print(`unknown command "${command}"\n\n${HELP}`, 1, true);
  }
}

/** `token ROUTE` is run by hand: worth waiting a little longer for the store than a start does. */
const TOKEN_STORE_WAIT_MS = 3_000;

function print(text: string, code: number, toStderr = false): number {
  (toStderr ? process.stderr : process.stdout).write(`${text}\n`);
  return code;
}

/** The package's version, from the package.json above this file (dist/cli/ when compiled, dist/ when bundled). */
async function version(): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  for (const up of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(await readFile(new URL(up, import.meta.url), 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'token-sidecar') return pkg.version;
    } catch {
      // not there: look one level up
    }
  }
  return 'unknown';
}

function reportProblems(file: string, result: Extract<LoadResult, { ok: false }>): number {
  process.stderr.write(`${file}: ${result.problems.length} problem${result.problems.length === 1 ? '' : 's'}\n`);
  for (const p of result.problems) process.stderr.write(`  ${p}\n`);
  return 1;
}

async function validate(file: string): Promise<number> {
  const result = await loadConfigFile(file);
  if (!result.ok) return reportProblems(file, result);
  for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
  const { routes, store } = result.config;
  return print(`${file}: ok (${routes.length} route${routes.length === 1 ? '' : 's'}: ${routes.map((r) => r.name).join(', ')}; store: ${store.type})`, 0);
}

async function token(file: string, routeName: string): Promise<number> {
  const result = await loadConfigFile(file);
  if (!result.ok) return reportProblems(file, result);
  const route = result.config.routes.find((r) => r.name === routeName);
  if (!route) return print(`no route named "${routeName}" (routes: ${result.config.routes.map((r) => r.name).join(', ')})`, 1, true);
  if (route.auth.type === 'static') return print(JSON.stringify({ route: routeName, source: 'static' }, null, 2), 0);
  // stdout carries the JSON answer (for `| jq`); logs go to stderr.
  const log = createLogger({ level: process.env['LOG_LEVEL'] ?? 'warn', destination: pino.destination(2) });
  let keeping: TokenKeeping;
  try {
    keeping = await createTokenKeeping(result.config, { log, storeWaitMs: TOKEN_STORE_WAIT_MS });
  } catch (err) {
    return print(`store unavailable: ${(err as Error).message}`, 2, true);
  }
  if (!keeping.storeReady) process.stderr.write('warning: the store is not reachable; fetching without it\n');
  const { manager } = keeping;
  try {
    const { token: t, source } = await manager.get(routeName);
    return print(
      JSON.stringify(
        {
          route: routeName,
          source,
          fingerprint: t.fingerprint,
          expiresAt: new Date(t.expiresAtMs).toISOString(),
          expiresInS: Math.round((t.expiresAtMs - Date.now()) / 1000),
          lifetimeSource: t.lifetimeSource,
          scope: t.scope ?? null,
          tokenType: t.tokenType,
          ...authSummary(route.auth),
        },
        null,
        2,
      ),
      0,
    );
  } catch (err) {
    const detail = isSidecarError(err) ? `${err.code}: ${err.message}` : String(err);
    return print(`token for ${routeName} failed: ${detail}`, 2, true);
  } finally {
    await keeping.close();
  }
}

async function start(file: string): Promise<number> {
  const result = await loadConfigFile(file);
  if (!result.ok) return reportProblems(file, result);
  const { log, accessLog } = createLoggers();
  for (const w of result.warnings) log.warn({ event: 'config.warning' }, w);
  // Signals before anything listens: Node installs a SIGTERM handler only once a listener exists, and until then a
  // SIGTERM (one sent the moment `listening` is read, say) ends the process without a drain.
  let watcher: ConfigWatcher | undefined;
  const starting = Sidecar.start({ config: result.config, log, accessLog });
  const stopped = new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting now');
        resolve(130);
        return;
      }
      stopping = true;
      watcher?.stop();
      log.info({ event: 'draining', signal, drainTimeoutMs: result.config.drainTimeoutMs }, 'draining');
      void starting.then(
        (sidecar) => sidecar.stop().then(() => log.info({ event: 'stopped' }, 'stopped')),
        () => undefined, // the start failed: reported below
      ).then(() => resolve(0));
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      log.info({ event: 'config.reload_requested', signal: 'SIGHUP' }, 'reloading');
      void watcher?.check(true);
    });
  });
  let sidecar: Sidecar;
  try {
    sidecar = await starting;
  } catch (err) {
    log.fatal({ event: 'start_failed', err: (err as Error).message }, 'could not start');
    return 2;
  }
  watcher = new ConfigWatcher(file, result.files, (next) => {
    if (next.ok) {
      for (const w of next.warnings) log.warn({ event: 'config.warning' }, w);
      sidecar.apply(next.config);
    } else {
      log.error({ event: 'config.reload_failed', problems: next.problems }, `${file}: ${next.problems.length} problem(s); still serving the last good config`);
    }
  }, RELOAD_POLL_MS, { initial: result });
  await watcher.start();
  return stopped;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Give pino a moment to flush, then leave even if a stray handle remains.
    setTimeout(() => process.exit(code), 50).unref();
  },
  (err: unknown) => {
    process.stderr.write(`token-sidecar: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  },
);
