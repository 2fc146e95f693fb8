/**
 * Credential shapes people paste into prompts, configs and command lines. Shared by the decision
 * log and the worker's own log lines (the agent's argv), which must not become a secret store.
 */
const SECRET_VALUE = [
  /\bsk-[A-Za-z0-9_-]{16,}/g,
  /\bgh[pousr]_[A-Za-z0-9]{20,}/g,
  /\bgithub_pat_[A-Za-z0-9_]{20,}/g,
  /\bxox[abposr]-[A-Za-z0-9-]{10,}/g,
  /\bAKIA[0-9A-Z]{16}\b/g,
  /\bBearer\s+[A-Za-z0-9._~+/=-]{12,}/gi,
  /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----/g,
  /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g,
  /\bAIza[0-9A-Za-z_-]{30,}/g,
  /\bhf_[A-Za-z0-9]{20,}/g,
  /\bglpat-[A-Za-z0-9_-]{20,}/g,
  /\bnpm_[A-Za-z0-9]{30,}/g,
];

/** `password: x`, `AWS_SECRET_ACCESS_KEY=x`, `--api-key x`…: the name stays, the value goes. */
const SECRET_ASSIGNMENT = /((?:secret[_-]?access[_-]?key|password|passwd|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)["']?\s*[:=]\s*|--(?:password|api-key|token)[= ])["']?[^\s"',;]{4,}/gi;

export function redactString(value: string): string {
  let out = value;
  for (const pattern of SECRET_VALUE) out = out.replace(pattern, '[REDACTED]');
  return out.replace(SECRET_ASSIGNMENT, '$1[REDACTED]');
}


const SECRET_KEY = /(token|secret|password|passwd|api[_-]?key|authorization|credential|private[_-]?key|cookie)/i;
/** A deep copy with secret-looking keys and credential-shaped strings replaced. */
export function redact(value: unknown): unknown {
  if (typeof value === 'string') return redactString(value);
  if (Array.isArray(value)) return value.map(redact);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEY.test(k) && v !== null ? '[REDACTED]' : redact(v);
    return out;
  }
  return value;
}
