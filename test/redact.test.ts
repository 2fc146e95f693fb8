/**
 * The redaction set under the decision log and the worker's argv log: each common credential shape
 * goes, with what names it kept; ids that only look random (git object ids, UUIDs, trace ids,
 * digests, paths, the working directory) stay readable.
 */
import { describe, expect, it } from 'vitest';
import { redact, redactString } from '../src/redact.js';

// Assembled at run time, so no scanner takes this file for a leak.
const fake = (...parts: string[]) => parts.join('');

describe('redactString', () => {
  it.each([
    ['OpenAI', fake('sk-', 'proj-', 'Ab3dEf6hIj9kLm2nOp5q')],
    ['Anthropic', fake('sk-', 'ant-api03-', 'x'.repeat(40))],
    ['GitHub classic', fake('ghp_', 'A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8')],
    ['GitHub fine-grained', fake('github_pat_', '11ABCDEFG0', 'x'.repeat(40))],
    ['Slack', fake('xoxb-', '1234567890-abcdefghij')],
    ['AWS access key id', fake('AKIA', 'IOSFODNN7EXAMPLE')],
    ['AWS temporary key id', fake('ASIA', 'IOSFODNN7EXAMPLE')],
    ['AWS secret access key', fake('wJalrXUtnFEMI/K7MDENG', '/bPxRfiCYEXAMPLEKEY')],
    ['AWS secret without / or +', fake('wJalrXUtnFEMIK7MDENG', 'bPxRfiCYEXAMPLEKEY12')],
    ['Google API key', fake('AIza', 'SyD-abcdefghijklmnopqrstuvwxyz0123')],
    ['Google OAuth token', fake('ya29.', 'a0AfH6SMBabcdefghijklmnop')],
    ['Hugging Face', fake('hf_', 'abcdefghijklmnopqrstuvwxyzABCD')],
    ['GitLab personal', fake('glpat-', 'xxxxxxxxxxxxxxxxxxxx')],
    ['GitLab pipeline trigger', fake('glptt-', '0123456789abcdef0123')],
    ['npm', fake('npm_', 'abcdefghijklmnopqrstuvwxyz0123456789')],
    ['Stripe live', fake('sk_', 'live_', '4eC39HqLyjWDarjtT1zdp7dc')],
    ['SendGrid', fake('SG.', 'abcdefghijklmnopqrstuv', '.', 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG')],
    ['PyPI', fake('pypi-', 'AgEIcHlwaS5vcmc', 'x'.repeat(60))],
    ['DigitalOcean', fake('dop_v1_', 'a'.repeat(64))],
    ['JWT', fake('eyJhbGciOiJIUzI1NiJ9', '.', 'eyJzdWIiOiIxMjM0In0', '.', 'abcdefghijklmnop')],
    ['Bearer header', fake('Bearer ', 'abcdefghijklmnop1234')],
  ])('cuts a %s token', (_name, token) => {
    const out = redactString(`use ${token} now`);
    expect(out).toBe('use [REDACTED] now');
  });

  it('cuts a private key block whole', () => {
    const key = fake('-----BEGIN ', 'OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END ', 'OPENSSH PRIVATE KEY-----');
    expect(redactString(`key:\n${key}\ndone`)).toBe('key:\n[REDACTED]\ndone');
  });

  it.each([
    ['password: hunter2hunter2', 'password: [REDACTED]'],
    ['"password": "hunter2hunter2"', '"password": "[REDACTED]"'],
    ['AWS_SECRET_ACCESS_KEY=abcd1234', 'AWS_SECRET_ACCESS_KEY=[REDACTED]'],
    ['aws_secret_access_key = abcd1234', 'aws_secret_access_key = [REDACTED]'],
    ['client_secret=abcd1234', 'client_secret=[REDACTED]'],
    ['refresh_token: abcd1234', 'refresh_token: [REDACTED]'],
    ['AccountKey=abcd1234==;', 'AccountKey=[REDACTED];'],
    ['--api-key abcd1234', '--api-key [REDACTED]'],
    ['--password=abcd1234', '--password=[REDACTED]'],
    ['postgres://app:s3cr3tpw@db:5432/app', 'postgres://app:[REDACTED]@db:5432/app'],
    ['https://user:tok3n@example.com/x', 'https://user:[REDACTED]@example.com/x'],
  ])('keeps the name and cuts the value of %s', (text, want) => {
    expect(redactString(text)).toBe(want);
  });

  it.each([
    ['a git commit', 'checkout 9fceb02d0ae598e95dc970b74767f19372d61af8'],
    ['a UUID', 'decision 4ca636c1-55e4-417a-b1d8-4aceb67960d1'],
    ['a trace id', 'trace 4bf92f3577b34da6a3ce929d0e0e4736'],
    ['a sha256 digest', `sha256:${'ab12'.repeat(16)}`],
    ['a path', '/home/alice/src/components/Header/NavigationBar2.tsx'],
    ['the working directory', 'PWD=/home/alice/project'],
    ['a URL without credentials', 'https://example.com:8443/path?q=1'],
    ['a task', 'Fix the failing unit test in src/util.ts and run npm test'],
  ])('leaves %s alone', (_name, text) => {
    expect(redactString(text)).toBe(text);
  });
});

describe('redact', () => {
  it('replaces values of secret-looking keys and credential shapes in nested strings, and leaves the input alone', () => {
    const input = { env: { API_KEY: 'x', HOME: '/home/a' }, headers: [{ authorization: 'Basic abc' }], task: fake('use ', 'hf_', 'a'.repeat(24)), n: 3, none: null, token: null };
    expect(redact(input)).toEqual({ env: { API_KEY: '[REDACTED]', HOME: '/home/a' }, headers: [{ authorization: '[REDACTED]' }], task: 'use [REDACTED]', n: 3, none: null, token: null });
    expect(input.env.API_KEY).toBe('x');
  });
});
