import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, decodeProtectedHeader, EmbeddedJWK, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import { parseSigningKey, processKey, type JwsAlg } from '../../src/core/signing-key.js';
import { accessTokenHash, asksForNonce, dpopProof, htuOf, NonceBook } from '../../src/oauth/dpop.js';

describe('DPoP proofs (RFC 9449 §4.2)', () => {
  it.each<JwsAlg>(['ES256', 'EdDSA', 'PS256', 'RS256'])('%s: verifies with the embedded jwk; typ, htm, htu without query, iat, ath, unique jti', async (alg) => {
    const key = processKey(alg);
    const nowMs = Date.now();
    const jtis = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const proof = dpopProof(key, { method: 'POST', url: 'https://api.vendor.test/v2/pay?x=1#frag', nowMs, nonce: 'n-1', ath: accessTokenHash('tok-123') });
      const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: [alg] });
      expect(payload).toMatchObject({ htm: 'POST', htu: 'https://api.vendor.test/v2/pay', nonce: 'n-1', iat: Math.floor(nowMs / 1000) });
      expect(payload['ath']).toBe(createHash('sha256').update('tok-123').digest('base64url'));
      jtis.add(String(payload.jti));
      // Only public members in the header; its thumbprint is the key's jkt.
      expect(Object.keys(protectedHeader.jwk ?? {}).sort()).toEqual(Object.keys(key.publicJwk).sort());
      expect(protectedHeader.jwk).not.toHaveProperty('d');
      expect(await calculateJwkThumbprint(protectedHeader.jwk ?? {})).toBe(key.thumbprint);
    }
    expect(jtis.size).toBe(20);
  });

  it('no ath and no nonce on a token request', () => {
    const proof = dpopProof(processKey('ES256'), { method: 'POST', url: 'https://idp.test/token', nowMs: 0 });
    const payload = JSON.parse(Buffer.from(proof.split('.')[1] ?? '', 'base64url').toString()) as Record<string, unknown>;
    expect(Object.keys(payload).sort()).toEqual(['htm', 'htu', 'iat', 'jti']);
    expect(decodeProtectedHeader(proof)).toMatchObject({ typ: 'dpop+jwt', alg: 'ES256' });
  });

  it('htu drops query and fragment only', () => {
    expect(htuOf('https://a.test/p/q?x=1')).toBe('https://a.test/p/q');
    expect(htuOf('https://a.test/p#f')).toBe('https://a.test/p');
    expect(htuOf('https://a.test:8443/p')).toBe('https://a.test:8443/p');
  });
});

describe('server nonces (RFC 9449 §8, §9)', () => {
  it('keeps the newest valid nonce per origin; refuses bad or huge values; stays bounded', () => {
    const book = new NonceBook(100);
    expect(book.note('https://a', 'n1')).toBe(true);
    expect(book.note('https://a', 'n1')).toBe(false);
    expect(book.note('https://a', ['n2', 'n3'])).toBe(true);
    expect(book.get('https://a')).toBe('n2');
    for (const bad of ['', 'has space', 'quote"', 'back\\slash', 'line\nbreak', 'x'.repeat(513), 'é']) {
      expect(book.note('https://a', bad)).toBe(false);
    }
    expect(book.get('https://a')).toBe('n2');
    for (let i = 0; i < 1000; i++) book.note(`https://host-${i}`, `n${i}`);
    expect(book.get('https://a')).toBeUndefined();
    expect(book.get('https://host-999')).toBe('n999');
    expect(book.get('https://host-899')).toBeUndefined();
    expect(book.get('https://host-900')).toBe('n900');
  });

  it.each([
    ['DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"', true],
    ['Bearer realm="x", DPoP error="use_dpop_nonce"', true],
    ['dpop algs="ES256", error=use_dpop_nonce', true],
    ['DPoP error="invalid_token"', false],
    ['Bearer error="use_dpop_nonce"', false],
    [undefined, false],
  ])('%s → %s', (header, expected) => {
    expect(asksForNonce(header)).toBe(expected);
  });
});

describe('signing keys', () => {
  it('refuses what cannot sign, naming the key type, never the key', () => {
    const rsaSmall = parseSigningKey('-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----');
    expect(rsaSmall).toEqual({ ok: false, problem: 'is not a private key (expected a PKCS#8 PEM or a private JWK)' });
    const ec = processKey('ES256');
    const pem = ec.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const wrongAlg = parseSigningKey(pem, { alg: 'RS256' });
    expect(wrongAlg.ok).toBe(false);
    expect(!wrongAlg.ok && wrongAlg.problem).toBe('is an EC prime256v1 key, which cannot sign RS256 (use ES256)');
    expect(!wrongAlg.ok && wrongAlg.problem).not.toContain('PRIVATE');
  });
});
