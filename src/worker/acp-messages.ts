/**
 * Checks of what an ACP agent sends the worker, for the parts the worker reads: session updates,
 * permission requests and the results of its own requests. An agent runs model-written code and is
 * not trusted: a message that does not have the shape the protocol gives it is refused here (the
 * problem named by its path), never half-read further on. Fields the worker does not read are let
 * through unchecked, so an agent of a newer protocol revision keeps working.
 *
 * Each check returns the path and problem of the first fault, or null; a caller then reads the value
 * as the ACP SDK's type of it (the SDK is used for its types only: loading it cost a cold worker more
 * than everything else it does before its agent answers; acp-client.ts).
 */
import type { PermissionOptionKind, PlanEntryPriority, PlanEntryStatus, StopReason, ToolCallStatus, ToolKind } from '@agentclientprotocol/sdk';

type Obj = Record<string, unknown>;
/** The first fault, as `path: problem`; null when the value fits. */
export type Fault = string | null;

function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// Typed by the SDK's unions: a value the protocol does not have fails the type-check.
const STOP_REASONS: readonly StopReason[] = ['end_turn', 'max_tokens', 'max_turn_requests', 'refusal', 'cancelled'];
const TOOL_KINDS: readonly ToolKind[] = ['read', 'edit', 'delete', 'move', 'search', 'execute', 'think', 'fetch', 'switch_mode', 'other'];
const TOOL_STATUSES: readonly ToolCallStatus[] = ['pending', 'in_progress', 'completed', 'failed'];
const PERMISSION_KINDS: readonly PermissionOptionKind[] = ['allow_once', 'allow_always', 'reject_once', 'reject_always'];
const PLAN_PRIORITIES: readonly PlanEntryPriority[] = ['high', 'medium', 'low'];
const PLAN_STATUSES: readonly PlanEntryStatus[] = ['pending', 'in_progress', 'completed'];

function text(o: Obj, key: string, path: string): Fault {
  return typeof o[key] === 'string' ? null : `${path}.${key}: must be a string`;
}

function optional(o: Obj, key: string, path: string, check: (value: unknown) => boolean, what: string): Fault {
  const value = o[key];
  return value === undefined || value === null || check(value) ? null : `${path}.${key}: must be ${what}`;
}

function oneOf(values: readonly string[]): (value: unknown) => boolean {
  return (value) => typeof value === 'string' && values.includes(value);
}

function each(value: unknown, path: string, check: (item: unknown, path: string) => Fault): Fault {
  if (!Array.isArray(value)) return `${path}: must be an array`;
  for (let i = 0; i < value.length; i++) {
    const fault = check(value[i], `${path}[${i}]`);
    if (fault) return fault;
  }
  return null;
}

function first(...faults: (() => Fault)[]): Fault {
  for (const fault of faults) {
    const found = fault();
    if (found) return found;
  }
  return null;
}

function contentBlockFault(value: unknown, path: string): Fault {
  if (!isObj(value)) return `${path}: must be an object`;
  switch (value['type']) {
    case 'text':
      return text(value, 'text', path);
    case 'resource_link':
      return text(value, 'uri', path);
    case 'resource': {
      const resource = value['resource'];
      if (!isObj(resource)) return `${path}.resource: must be an object`;
      return first(
        () => text(resource, 'uri', `${path}.resource`),
        () => optional(resource, 'text', `${path}.resource`, (t) => typeof t === 'string', 'a string'),
      );
    }
    default:
      // image, audio and blocks of later revisions: described by their type only.
      return typeof value['type'] === 'string' ? null : `${path}.type: must be a string`;
  }
}

function toolContentFault(value: unknown, path: string): Fault {
  if (!isObj(value)) return `${path}: must be an object`;
  switch (value['type']) {
    case 'content':
      return contentBlockFault(value['content'], `${path}.content`);
    case 'diff':
      return first(
        () => text(value, 'path', path),
        () => text(value, 'newText', path),
        () => optional(value, 'oldText', path, (t) => typeof t === 'string', 'a string'),
      );
    case 'terminal':
      return text(value, 'terminalId', path);
    default:
      return `${path}.type: must be "content", "diff" or "terminal"`;
  }
}

function toolCallFault(u: Obj, path: string, announce: boolean): Fault {
  return first(
    () => text(u, 'toolCallId', path),
    () => (announce ? text(u, 'title', path) : optional(u, 'title', path, (t) => typeof t === 'string', 'a string')),
    () => optional(u, 'kind', path, oneOf(TOOL_KINDS), `one of ${TOOL_KINDS.join(', ')}`),
    () => optional(u, 'status', path, oneOf(TOOL_STATUSES), `one of ${TOOL_STATUSES.join(', ')}`),
    () => (u['content'] === undefined || u['content'] === null ? null : each(u['content'], `${path}.content`, toolContentFault)),
    () => (u['locations'] === undefined || u['locations'] === null ? null : each(u['locations'], `${path}.locations`, (l, p) => (isObj(l) ? text(l, 'path', p) : `${p}: must be an object`))),
  );
}

function updateFault(u: unknown, path: string): Fault {
  if (!isObj(u)) return `${path}: must be an object`;
  switch (u['sessionUpdate']) {
    case 'agent_message_chunk':
    case 'agent_thought_chunk':
    case 'user_message_chunk':
      return contentBlockFault(u['content'], `${path}.content`);
    case 'tool_call':
      return toolCallFault(u, path, true);
    case 'tool_call_update':
      return toolCallFault(u, path, false);
    case 'plan':
      return each(u['entries'], `${path}.entries`, (e, p) =>
        isObj(e)
          ? first(
              () => text(e, 'content', p),
              () => (oneOf(PLAN_PRIORITIES)(e['priority']) ? null : `${p}.priority: must be one of ${PLAN_PRIORITIES.join(', ')}`),
              () => (oneOf(PLAN_STATUSES)(e['status']) ? null : `${p}.status: must be one of ${PLAN_STATUSES.join(', ')}`),
            )
          : `${p}: must be an object`,
      );
    case 'usage_update': {
      const cost = u['cost'];
      return first(
        () => (Number.isFinite(u['used']) ? null : `${path}.used: must be a number`),
        () => (Number.isFinite(u['size']) ? null : `${path}.size: must be a number`),
        () => (cost === undefined || cost === null || (isObj(cost) && Number.isFinite(cost['amount']) && typeof cost['currency'] === 'string') ? null : `${path}.cost: must be {amount, currency}`),
      );
    }
    default:
      // Mode, command, config-option updates and those of later revisions: the worker maps none of them.
      return typeof u['sessionUpdate'] === 'string' ? null : `${path}.sessionUpdate: must be a string`;
  }
}

/** session/update params. */
export function sessionNotificationProblem(params: unknown): Fault {
  if (!isObj(params)) return 'params: must be an object';
  return first(
    () => text(params, 'sessionId', 'params'),
    () => updateFault(params['update'], 'params.update'),
  );
}

/** session/request_permission params. */
export function permissionRequestProblem(params: unknown): Fault {
  if (!isObj(params)) return 'params: must be an object';
  const toolCall = params['toolCall'];
  return first(
    () => text(params, 'sessionId', 'params'),
    () => (isObj(toolCall) ? toolCallFault(toolCall, 'params.toolCall', false) : 'params.toolCall: must be an object'),
    () =>
      each(params['options'], 'params.options', (o, p) =>
        isObj(o)
          ? first(
              () => text(o, 'optionId', p),
              () => text(o, 'name', p),
              () => (oneOf(PERMISSION_KINDS)(o['kind']) ? null : `${p}.kind: must be one of ${PERMISSION_KINDS.join(', ')}`),
            )
          : `${p}: must be an object`,
      ),
  );
}

/** The result of initialize. */
export function initializeProblem(result: unknown): Fault {
  if (!isObj(result)) return 'result: must be an object';
  // protocolVersion is not read (the worker speaks v1 and fails on what it cannot read); agentInfo
  // is read leniently where it is used (acp-session.ts): an odd one costs a name, not the session.
  return optional(result, 'agentCapabilities', 'result', isObj, 'an object');
}

/** The result of session/new (and, without its sessionId, of session/load and session/resume). */
export function sessionResultProblem(result: unknown, withId: boolean): Fault {
  if (!isObj(result)) return 'result: must be an object';
  return first(
    () => (withId ? text(result, 'sessionId', 'result') : null),
    () => optional(result, 'configOptions', 'result', Array.isArray, 'an array'),
    () => optional(result, 'models', 'result', isObj, 'an object'),
  );
}

/** The result of session/prompt. */
export function promptResultProblem(result: unknown): Fault {
  if (!isObj(result)) return 'result: must be an object';
  return oneOf(STOP_REASONS)(result['stopReason']) ? null : `result.stopReason: must be one of ${STOP_REASONS.join(', ')}`;
}

/** Results the worker does not read (session/set_config_option, session/set_model): an object. */
export function objectResultProblem(result: unknown): Fault {
  return isObj(result) ? null : 'result: must be an object';
}

