/**
 * The parts of undici the sidecar uses, loaded without the rest. The package's index also loads fetch, WebSocket,
 * EventSource, the cache, retry and mock layers at import: measured on the shipped bundle, that is ~8 MB more
 * resident memory at idle (docs/performance.md). Types are the package's own (src/http/undici-parts.d.ts).
 */
import Dispatcher from 'undici/lib/dispatcher/dispatcher.js';
import api from 'undici/lib/api/index.js';
import Pool from 'undici/lib/dispatcher/pool.js';
import Agent from 'undici/lib/dispatcher/agent.js';
import Client from 'undici/lib/dispatcher/client.js';
import buildConnector from 'undici/lib/core/connect.js';

// What undici's index does so that `pool.request()`, `.stream()` and `.upgrade()` exist on every dispatcher.
Object.assign(Dispatcher.prototype, api);

export { Agent, Client, Pool, buildConnector };
export type { Dispatcher };
