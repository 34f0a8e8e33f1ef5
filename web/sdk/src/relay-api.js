// The relay's REST calls a client needs before syncing: register, log in with a fresh device key
// (which returns the device certificate), and the relay's public keys (its JWK Set).

import { newDeviceKey } from "./crypto.js";
import { CertificateCache } from "./certs.js";
import { fromBase64Url, toBase64Url } from "./pop.js";

/** A failed REST call: HTTP status and the relay's error code. */
export class RelayError extends Error {
  name = "RelayError";
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** @param {Response} response */
async function failure(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {}
  const detail = /** @type {any} */ (body).error ?? /** @type {any} */ (body).detail ?? {};
  const code = typeof detail === "object" ? detail.code ?? "error" : "error";
  const message = typeof detail === "object" ? detail.message ?? "" : String(detail);
  return new RelayError(response.status, code, message);
}

/**
 * The header by which a browser client asks for its refresh token as an HttpOnly cookie
 * (relay/http/refresh_cookie.py): the relay sets it at login and refresh, reads it at refresh
 * when the body has no token, and clears it at logout; bodies then carry no refresh token.
 */
export const REFRESH_COOKIE_HEADER = { "QuickSlot-Refresh": "cookie" };

/**
 * @param {string} baseUrl @param {string} path @param {unknown} body
 * @param {Record<string, string>} [headers]
 * @returns {Promise<Response>}
 */
export function post(baseUrl, path, body, headers = {}) {
  return fetch(new URL(path, baseUrl), {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
}

/** Create an account. @param {string} baseUrl @param {{email: string, password: string, displayName: string}} account */
export async function register(baseUrl, { email, password, displayName }) {
  const response = await post(baseUrl, "/api/v1/auth/register", { email, password, display_name: displayName });
  if (response.status !== 201) throw await failure(response);
  return response.json();
}

/**
 * The relay's Ed25519 public keys (kid -> raw key) from /.well-known/jwks.json.
 * @param {string} baseUrl @returns {Promise<Record<string, Uint8Array>>}
 */
export async function fetchRelayKeys(baseUrl) {
  const response = await fetch(new URL("/.well-known/jwks.json", baseUrl));
  if (response.status !== 200) throw await failure(response);
  /** @type {Record<string, Uint8Array>} */
  const keys = {};
  for (const jwk of (await response.json()).keys ?? []) {
    if (jwk.kty === "OKP" && jwk.crv === "Ed25519" && jwk.kid && jwk.x) {
      const raw = fromBase64Url(jwk.x);
      if (raw.length === 32) keys[jwk.kid] = raw;
    }
  }
  return keys;
}

/**
 * A signed-in device: its user, tokens, private key, certificate (bytes and id) and the trusted
 * relay keys (as the CertificateCache validation takes).
 * @typedef {object} Session
 * @property {string} userId
 * @property {string} accessToken
 * @property {string | null} refreshToken null when the relay keeps it in an HttpOnly cookie
 * @property {import("./crypto.js").PrivateKey} seed the device's private key: a non-extractable
 *   WebCrypto CryptoKey where the runtime does Ed25519, else its raw 32-byte seed
 * @property {Uint8Array} publicKey the device's public key (what the certificate certifies)
 * @property {Record<string, Uint8Array>} [certificates] earlier certificates of this client (by id)
 *   that signed records still waiting in its outbox (QuickSlotClient keeps them across a new login)
 * @property {Uint8Array} certificate
 * @property {string} certId
 * @property {CertificateCache} trust
 */

/**
 * Log in with a fresh device key: a fresh key per login means the certificate always carries the
 * account's current rights. The certificate is verified against the relay's keys before use.
 * With `refreshCookie` (a browser page on the relay's origin) the refresh token stays in an
 * HttpOnly cookie that no script can read, and the session's `refreshToken` is null.
 * @param {string} baseUrl @param {{email: string, password: string}} credentials
 * @param {{refreshCookie?: boolean}} [options]
 * @returns {Promise<Session>}
 */
export async function login(baseUrl, { email, password }, { refreshCookie = false } = {}) {
  const device = await newDeviceKey();
  const trust = new CertificateCache(await fetchRelayKeys(baseUrl));
  const response = await post(
    baseUrl,
    "/api/v1/auth/login",
    { email, password, device_public_key: toBase64Url(device.publicKey) },
    refreshCookie ? REFRESH_COOKIE_HEADER : {},
  );
  if (response.status !== 200) throw await failure(response);
  const body = await response.json();
  if (!body.device_certificate) throw new RelayError(200, "no_certificate", "the relay issued no device certificate");
  const certificate = fromBase64Url(body.device_certificate);
  const cert = await trust.verify(certificate);
  return {
    userId: String(body.user.id),
    accessToken: body.access_token,
    refreshToken: body.refresh_token ?? null,
    seed: device.privateKey,
    publicKey: device.publicKey,
    certificate,
    certId: cert.certId,
    trust,
  };
}
