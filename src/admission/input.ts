import type { ReservationStore, SlotKey } from './store/types.js';
import { slotKey } from './store/types.js';
import type { AdmissionInput, Usage } from './types.js';

export const RECENT_WINDOW_SECONDS = 60;

type Catalog = AdmissionInput['catalog'];

/**
 * Everything about the catalog that does not change between requests, computed once per config:
 * its JSON (the largest part of every input) and the slot keys whose counts feed `usage`.
 */
export interface PreparedCatalog {
  catalog: Catalog;
  json: string;
  backends: string[];
  /** "<backend>/<profile>" */
  profiles: string[];
}

export function prepareCatalog(catalog: Catalog): PreparedCatalog {
  const backends = Object.keys(catalog.backends);
  const profiles = backends.flatMap((b) => Object.keys(catalog.backends[b]?.profiles ?? {}).map((p) => `${b}/${p}`));
  return { catalog, json: JSON.stringify(catalog), backends, profiles };
}

export async function readUsage(store: ReservationStore, prepared: PreparedCatalog, userId: string, channelId: string): Promise<Usage> {
  const keys: SlotKey[] = [slotKey('total', '*'), slotKey('user', userId), slotKey('channel', channelId)];
  for (const b of prepared.backends) keys.push(slotKey('backend', b));
  for (const p of prepared.profiles) {
    keys.push(slotKey('profile', p), slotKey('profile_user', `${p}/${userId}`), slotKey('profile_channel', `${p}/${channelId}`));
  }
  const [counts, recent] = await Promise.all([
    store.counts(keys),
    store.recent([slotKey('user', userId), slotKey('channel', channelId)], RECENT_WINDOW_SECONDS * 1000),
  ]);
  const at = (k: SlotKey) => counts.get(k) ?? 0;
  const usage: Usage = {
    total: at(slotKey('total', '*')),
    user: at(slotKey('user', userId)),
    channel: at(slotKey('channel', channelId)),
    backends: {},
    profiles: {},
    userProfiles: {},
    channelProfiles: {},
    recent: {
      windowSeconds: RECENT_WINDOW_SECONDS,
      user: recent.get(slotKey('user', userId)) ?? 0,
      channel: recent.get(slotKey('channel', channelId)) ?? 0,
    },
  };
  for (const b of prepared.backends) usage.backends[b] = at(slotKey('backend', b));
  for (const p of prepared.profiles) {
    usage.profiles[p] = at(slotKey('profile', p));
    usage.userProfiles[p] = at(slotKey('profile_user', `${p}/${userId}`));
    usage.channelProfiles[p] = at(slotKey('profile_channel', `${p}/${channelId}`));
  }
  return usage;
}

/** The input as JSON, splicing in the catalog's cached JSON instead of serialising it again. */
export function serializeInput(input: Omit<AdmissionInput, 'catalog'>, prepared: PreparedCatalog): string {
  const { request, caller, resolved, usage, now } = input;
  return `{"request":${JSON.stringify(request)},"caller":${JSON.stringify(caller)},"resolved":${JSON.stringify(resolved)},"catalog":${prepared.json},"usage":${JSON.stringify(usage)},"now":${JSON.stringify(now)}}`;
}
