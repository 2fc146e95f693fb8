export { createServer, DEFAULT_MAX_BODY_BYTES, type RunningServer, type ServedGate, type ServerListen, type ServerOptions } from './server.js';
export { errorReply, HTTP_ERROR_STATUS, HTTP_STATUS, httpErrorBody, type ErrorBody, type HttpErrorCode } from './errors.js';
export {
  createServerClient,
  parseServerAddress,
  ServerApiError,
  type CallOptions as ServerCallOptions,
  type RemoteAdmitResult,
  type RemoteHealth,
  type RemoteListedSpawn,
  type RemoteSpawn,
  type RemoteSpawnStatus,
  type RemoteSweepReport,
  type ServerAddress,
  type ServerClient,
  type ServerClientOptions,
} from './client.js';
