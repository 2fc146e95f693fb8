/** The reference worker: HTTP contract (docs/worker-protocol.md) in front of one ACP agent over stdio. */
export { startWorker } from './worker.js';
export type { PermissionMode, RunningWorker, StartWorkerOptions, WorkerListen } from './worker.js';
export { parseListen, runWorkerFromEnv, workerBinCommand, workerOptionsFromEnv } from './main.js';
export type { WorkerIo } from './main.js';
export type * from '../protocol/events.js';
