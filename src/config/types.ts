/** The validated, resolved configuration the rest of the code runs on: units in ms/bytes, secrets resolved. */
import type { Secret } from '../core/secret.js';

export interface TlsMaterial {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: Secret | undefined;
  servername?: string | undefined;
}

export interface OAuth2Auth {
  type: 'oauth2';
  grant: 'client_credentials';
  tokenUrl: URL;
  clientId: string;
  clientSecret: Secret;
  clientAuth: 'client_secret_basic' | 'client_secret_post';
  scopes: string[];
  audience: string | undefined;
  resource: URL | undefined;
  params: Record<string, string>;
  tls: TlsMaterial | undefined;
  timeoutMs: number;
  refreshAheadRatio: number;
  defaultExpiresInMs: number;
  maxLifetimeMs: number;
  /** Hash of the credential identity (token URL, client, grant, scopes, audience, secret hash): the store key. */
  identity: string;
}

export interface StaticAuth {
  type: 'static';
  value: Secret;
}

export interface Route {
  name: string;
  match: { pathPrefix: string | undefined; host: string | undefined };
  upstream: URL;
  /** `https://api.vendor.example` — the only origin this route can ever reach. */
  upstreamOrigin: string;
  /** `/v2` (no trailing slash unless it is `/`). */
  upstreamBasePath: string;
  upstreamTls: TlsMaterial | undefined;
  auth: OAuth2Auth | StaticAuth;
  inject: { header: string; format: string };
  retryOn401: boolean;
  replayBodyLimitBytes: number;
  timeouts: { connectMs: number; responseMs: number; idleMs: number };
  warm: boolean;
  allowInsecureHttp: boolean;
}

export interface HostPort {
  host: string;
  port: number;
}

export interface RedisStoreConfig {
  type: 'redis';
  url: string | undefined;
  sentinels: HostPort[] | undefined;
  name: string | undefined;
  sentinelPassword: Secret | undefined;
  cluster: HostPort[] | undefined;
  username: string | undefined;
  password: Secret | undefined;
  tls: TlsMaterial | undefined;
  keyPrefix: string;
  commandTimeoutMs: number;
  coordinationTimeoutMs: number;
  lockLeaseMs: number;
  lockWaitTimeoutMs: number;
  encryptionKeys: { id: string; key: Buffer }[];
}

export type StoreConfig = { type: 'memory' } | RedisStoreConfig;

export interface Config {
  listen: HostPort;
  admin: HostPort;
  /** `listen` may be beyond loopback (the app port has no authentication); warned about at every start. */
  allowExternalListen: boolean;
  drainTimeoutMs: number;
  store: StoreConfig;
  audit: { destination: string };
  routes: Route[];
}
