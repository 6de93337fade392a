/** The validated, resolved configuration the rest of the code runs on: units in ms/bytes, secrets resolved. */
import type { Secret } from '../core/secret.js';
import type { SigningKey } from '../core/signing-key.js';

export interface TlsMaterial {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: Secret | undefined;
  servername?: string | undefined;
}

export type Grant = 'client_credentials' | 'refresh_token' | 'jwt_bearer' | 'token_exchange';
export type ClientAuthMethod =
  | 'client_secret_basic'
  | 'client_secret_post'
  | 'private_key_jwt'
  | 'tls_client_auth'
  | 'self_signed_tls_client_auth'
  | 'none';

/** Where the token and its expiry are in the response, and what the expiry means (vendor quirks). */
export interface TokenResponseShape {
  accessToken: readonly string[];
  expiry: readonly string[];
  expiryFormat: 'seconds' | 'milliseconds' | 'unix-seconds' | 'unix-milliseconds' | 'date';
}

export interface OAuth2Auth {
  type: 'oauth2';
  grant: Grant;
  tokenUrl: URL;
  clientId: string;
  /** client_secret_basic / client_secret_post only. */
  clientSecret: Secret | undefined;
  clientAuth: ClientAuthMethod;
  /** private_key_jwt: signs the client assertion; its `aud` is `assertionAudience` (resolved to one string). */
  clientKey: SigningKey | undefined;
  assertionAudience: string;
  /** grant refresh_token: the first refresh token (the fleet keeps the newest, rotated one in the store). */
  refreshToken: Secret | undefined;
  /**
   * Where the newest refresh token is kept: token URL, client id and the first refresh token only, so a rotated client
   * secret or a changed scope (a new token identity) keeps the chain instead of starting over from a used seed.
   */
  refreshChainKey: string | undefined;
  /** grant jwt_bearer (RFC 7523 §2.1). */
  assertion: { key: SigningKey; issuer: string; subject: string; audience: string } | undefined;
  /** grant token_exchange (RFC 8693): the subject token file, re-read at every token request. */
  subjectToken: { file: string; type: string; requestedType: string | undefined } | undefined;
  scopes: string[];
  audience: string | undefined;
  resource: string | undefined;
  params: Record<string, string>;
  /** Extra headers on the token request. */
  headers: Record<string, string>;
  tokenResponse: TokenResponseShape;
  tls: TlsMaterial | undefined;
  /** RFC 8705 §3.1 `x5t#S256` of `tls.cert`, when there is one. */
  certificateThumbprint: string | undefined;
  /** RFC 9449: the proof key (configured, or this process's own: `shared` says which). */
  dpop: { key: SigningKey; shared: boolean } | undefined;
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
  /** `Upgrade: websocket` allowed. */
  websocket: boolean;
  /** Quiet live streams are not cut by `timeouts.idle`. */
  streaming: boolean;
  /** HTTP/2 to the vendor: `true` required and multiplexed, `auto` offered by ALPN (one stream per connection), `false` HTTP/1.1. */
  http2: boolean | 'auto';
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

export interface MemcachedStoreConfig {
  type: 'memcached';
  /** Every credential's keys live on one of these, by consistent hashing (ketama). */
  servers: HostPort[];
  keyPrefix: string;
  commandTimeoutMs: number;
  coordinationTimeoutMs: number;
  lockLeaseMs: number;
  lockWaitTimeoutMs: number;
  /** How often a pod waiting for another pod's refresh reads the store (memcached has no pub/sub). */
  pollIntervalMs: number;
  encryptionKeys: { id: string; key: Buffer }[];
}

export type StoreConfig = { type: 'memory' } | RedisStoreConfig | MemcachedStoreConfig;

export interface ListenerLimitsConfig {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
}

export interface Config {
  listen: HostPort;
  admin: HostPort;
  /** `listen` may be beyond loopback (the app port has no authentication); warned about at every start. */
  allowExternalListen: boolean;
  drainTimeoutMs: number;
  limits: { app: ListenerLimitsConfig; admin: ListenerLimitsConfig };
  store: StoreConfig;
  audit: { destination: string };
  routes: Route[];
}
