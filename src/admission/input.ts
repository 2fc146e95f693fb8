import type { ReservationStore, SlotKey } from './store/types.js';
import { slotKey } from './store/types.js';
import type { AdmissionInput, Usage } from './types.js';

export const RECENT_WINDOW_SECONDS = 60;

type Catalog = AdmissionInput['catalog'];

interface PreparedBackend {
  slot: SlotKey;
  /** "<backend>/<profile>" */
  profiles: string[];
}

/** Everything about the catalog that does not change between requests, computed once per config. */
export interface PreparedCatalog {
  catalog: Catalog;
  /** By backend name; a Map so that a caller-chosen name never reaches Object.prototype. */
  backends: ReadonlyMap<string, PreparedBackend>;
}

export function prepareCatalog(catalog: Catalog): PreparedCatalog {
  const backends = new Map<string, PreparedBackend>();
  for (const [name, backend] of Object.entries(catalog.backends)) {
    backends.set(name, { slot: slotKey('backend', name), profiles: Object.keys(backend.profiles).map((p) => `${name}/${p}`) });
  }
  return { catalog, backends };
}

/**
 * Current counts for `usage`. Only the resolved backend's backend and profile entries are read:
 * the policy can move a spawn to another profile of that backend (build placement) but never to
 * another backend, and a missing entry counts 0 there as here (docs/policy.md, "Runtime data").
 */
export async function readUsage(store: ReservationStore, prepared: PreparedCatalog, backendName: string | null, userId: string, channelId: string, sessionKey: string): Promise<Usage> {
  const totalKey = slotKey('total', '*');
  const parentKey = slotKey('parent', sessionKey);
  const userKey = slotKey('user', userId);
  const channelKey = slotKey('channel', channelId);
  const backend = backendName === null ? undefined : prepared.backends.get(backendName);
  const profiles = (backend?.profiles ?? []).map((p) => ({
    name: p,
    profile: slotKey('profile', p),
    user: slotKey('profile_user', `${p}/${userId}`),
    channel: slotKey('profile_channel', `${p}/${channelId}`),
  }));
  const keys: SlotKey[] = [totalKey, userKey, channelKey, parentKey];
  if (backend) keys.push(backend.slot);
  for (const p of profiles) keys.push(p.profile, p.user, p.channel);
  const [counts, recent] = await Promise.all([store.counts(keys), store.recent([userKey, channelKey], RECENT_WINDOW_SECONDS * 1000)]);
  const at = (k: SlotKey) => counts.get(k) ?? 0;
  const usage: Usage = {
    total: at(totalKey),
    user: at(userKey),
    channel: at(channelKey),
    backends: {},
    profiles: {},
    userProfiles: {},
    channelProfiles: {},
    children: at(parentKey),
    recent: { windowSeconds: RECENT_WINDOW_SECONDS, user: recent.get(userKey) ?? 0, channel: recent.get(channelKey) ?? 0 },
  };
  if (backend && backendName !== null) usage.backends[backendName] = at(backend.slot);
  for (const p of profiles) {
    usage.profiles[p.name] = at(p.profile);
    usage.userProfiles[p.name] = at(p.user);
    usage.channelProfiles[p.name] = at(p.channel);
  }
  return usage;
}

/** The input as JSON without the catalog, which the engine holds as runtime data (PolicyEngine.evaluateJsonWithoutCatalog). */
export function serializeInput(input: Omit<AdmissionInput, 'catalog'>): string {
  const { request, caller, resolved, usage, now } = input;
  return JSON.stringify({ request, caller, resolved, usage, now });
}
