/**
 * The allow-list of egress "proxy" (a profile's egressAllow): parsed by the config loader, matched by
 * spawngate's proxy (src/backends/egress-proxy.ts).
 */
import { isIPv6 } from 'node:net';

export interface EgressRule {
  /** Lowercase host; a leading "*." matches any subdomain (not the domain itself). */
  host: string;
  /** null: ports 80 and 443. */
  port: number | null;
}

const HOST = /^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/;
const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/** `host`, `host:port`, `*.domain`, `*.domain:port`, `1.2.3.4:port`, `[::1]:port`; null when malformed. */
export function parseEgressRule(pattern: string): EgressRule | null {
  const text = pattern.trim().toLowerCase();
  let host = text;
  let port: number | null = null;
  const bracketed = /^\[([0-9a-f:.]+)\](?::(\d{1,5}))?$/.exec(text);
  if (bracketed) {
    if (!isIPv6(bracketed[1]!)) return null;
    host = bracketed[1]!;
    port = bracketed[2] === undefined ? null : Number(bracketed[2]);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon >= 0) {
      host = text.slice(0, colon);
      const digits = text.slice(colon + 1);
      if (!/^\d{1,5}$/.test(digits)) return null;
      port = Number(digits);
    }
    if (!HOST.test(host) && !IPV4.test(host)) return null;
  }
  if (port !== null && (port < 1 || port > 65535)) return null;
  return { host: host.replace(/\.$/, ''), port };
}

export function egressAllowed(rules: readonly EgressRule[], host: string, port: number): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '').replace(/\.$/, '');
  return rules.some((rule) => {
    const portOk = rule.port === null ? port === 443 || port === 80 : rule.port === port;
    if (!portOk) return false;
    return rule.host.startsWith('*.') ? h.endsWith(rule.host.slice(1)) && h.length > rule.host.length - 1 : h === rule.host;
  });
}

