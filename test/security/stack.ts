/**
 * An in-process sidecar between a fake token endpoint and an echo vendor, through the real config loader, with
 * optional listener limits (small ones, so limits can be tested in a second rather than a minute).
 */
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { createLogger } from '../../src/log.js';
import { Sidecar, type SidecarOptions } from '../../src/sidecar.js';
import { capturingDestination } from '../helpers/log-capture.js';

export const CLIENT_ID = 'stack-client';
export const SECRET = 'St4ck-Test-Secret-9102';

export interface Stack {
  idp: FakeIdp;
  vendor: EchoVendor;
  sidecar: Sidecar;
  proxyPort: number;
  adminPort: number;
  lines: string[];
  close(): Promise<void>;
}

type Json = Record<string, unknown>;

/** Route `pix` (/pix → vendor/v2, oauth2), plus `extraRoutes` (given the vendor's and the idp's URLs). */
export async function startStack(
  opts: { limits?: SidecarOptions['limits']; secret?: string; route?: Json; extraRoutes?: (vendorUrl: string, idpUrl: string) => Json[] } = {},
): Promise<Stack> {
  const idp = await startFakeIdp({ clients: { [CLIENT_ID]: SECRET } });
  const vendor = await startEchoVendor();
  const routes = [
    {
      name: 'pix',
      match: { pathPrefix: '/pix' },
      upstream: `${vendor.url}/v2`,
      auth: { type: 'oauth2', tokenUrl: idp.url, clientId: CLIENT_ID, clientSecret: opts.secret ?? SECRET },
      ...opts.route,
    },
    ...(opts.extraRoutes?.(vendor.url, idp.url) ?? []),
  ];
  const loaded = await loadConfigText(stringify({ version: 1, listen: '127.0.0.1:0', admin: '127.0.0.1:0', drainTimeout: '1s', routes }));
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', destination: capturingDestination(lines) });
  const sidecar = await Sidecar.start({ config: loaded.config, log, ...(opts.limits ? { limits: opts.limits } : {}) });
  return {
    idp,
    vendor,
    sidecar,
    proxyPort: Number(new URL(sidecar.proxyUrl).port),
    adminPort: Number(new URL(sidecar.adminUrl).port),
    lines,
    close: async () => {
      await Promise.allSettled([sidecar.stop(200), idp.close(), vendor.close()]);
    },
  };
}
