/**
 * Credential shapes people paste into prompts, configs and command lines. Shared by the decision
 * log and the worker's own log lines (the agent's argv), which must not become a secret store.
 */
const SECRET_VALUE = [
  /\bsk-[A-Za-z0-9_-]{16,}/g,
  /\bgh[pousr]_[A-Za-z0-9]{20,}/g,
  /\bgithub_pat_[A-Za-z0-9_]{20,}/g,
  /\bxox[abposr]-[A-Za-z0-9-]{10,}/g,
  // Long-term (AKIA) and temporary (ASIA) access key ids.
  /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/g,
  // An AWS secret access key on its own: exactly 40 base64 characters with upper, lower and digits.
  // Git object ids (40 lowercase hex) have no upper case and stay readable.
  /(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])/g,
  /\bBearer\s+[A-Za-z0-9._~+/=-]{12,}/gi,
  /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----/g,
  /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g,
  /\bAIza[0-9A-Za-z_-]{30,}/g,
  /\bhf_[A-Za-z0-9]{20,}/g,
  /\bglpat-[A-Za-z0-9_-]{20,}/g,
  /\bnpm_[A-Za-z0-9]{30,}/g,
  /\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}/g,
  /\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}/g,
  /\bya29\.[A-Za-z0-9_-]{20,}/g,
  /\bpypi-[A-Za-z0-9_-]{50,}/g,
  /\bdop_v1_[a-f0-9]{64}\b/g,
  /\bgl(?:ptt|dt|rt|cbt|oas)-[A-Za-z0-9_-]{20,}/g,
];

/** `scheme://user:password@host`: the user stays, the password goes. */
const URL_PASSWORD = /(\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]+:)[^\s/@]+@/gi;

/** `password: x`, `AWS_SECRET_ACCESS_KEY=x`, `--api-key x`…: the name stays, the value goes. */
const SECRET_ASSIGNMENT = /((?:secret[_-]?access[_-]?key|password|passwd|api[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|client[_-]?secret|private[_-]?key|account[_-]?key|shared[_-]?access[_-]?key)["']?\s*[:=]\s*["']?|--(?:password|api-key|token)[= ]["']?)[^\s"',;]{4,}/gi;

export function redactString(value: string): string {
  let out = value;
  for (const pattern of SECRET_VALUE) out = out.replace(pattern, '[REDACTED]');
  return out.replace(URL_PASSWORD, '$1[REDACTED]@').replace(SECRET_ASSIGNMENT, '$1[REDACTED]');
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
