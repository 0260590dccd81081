// Types for @ngx-sse/client (the code is plain JavaScript: src/*.js).

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export declare const STATES: readonly ConnectionState[];

/** The module's `sse-gap` event, parsed. */
export interface Gap {
  requested: string | null;
  reason: "malformed" | "epoch" | "unknown" | "evicted" | string;
  raw?: string;
}

/** The module's `sse-error` event, parsed: why the server ended or refused
 * a stream (EventSource then reconnects by itself after `retry:`). */
export interface SseError {
  reason: "token_expired" | "max_subscribers" | "stream_timeout" | "shutdown" | "zone_full" | "deleted" | "evicted" | "unavailable" | "catch_up" | string;
  raw?: string;
}

export type EventHandler = (data: string, event: MessageEvent) => void;

export interface BackoffOptions {
  /** ms before the first retry of connect()'s own (default 1000) */
  initialDelay?: number;
  /** ms, the ceiling (default 30000) */
  maxDelay?: number;
  /** default 2 */
  factor?: number;
  /** share of the delay that may be taken off at random, 0..1 (default 0.5) */
  jitter?: number;
}

export interface ConnectOptions extends BackoffOptions {
  onState?: (state: ConnectionState, conn: Connection) => void;
  onGap?: (gap: Gap, event: MessageEvent) => void;
  onError?: (error: Event | Error, conn: Connection) => void;
  /** the module's `sse-error` event (reason token_expired, max_subscribers, shutdown, …) */
  onSseError?: (info: SseError, event: MessageEvent) => void;
  /**
   * Token provider, called before every connection (and again after an
   * `sse-error` token_expired, before reconnecting: nothing is lost).
   */
  token?: () => string | Promise<string>;
  /** query argument that carries the token (default "token"); null: not in the URL */
  tokenParam?: string | null;
  /** put the token in this cookie (document.cookie, path=/) instead of the URL */
  tokenCookie?: string | null;
  /** resume point for the first connection */
  lastEventId?: string;
  /** consecutive failed attempts before giving up (default Infinity) */
  maxRetries?: number;
  /** the query argument that carries the resume point (default "last_event_id") */
  lastEventIdParam?: string;
  withCredentials?: boolean;
  /** an EventSource class (default: globalThis.EventSource) */
  EventSource?: new (url: string, init?: { withCredentials?: boolean }) => EventSource;
}

export interface Connection {
  readonly url: string;
  readonly state: ConnectionState;
  /** times a stream was opened again after the first one */
  readonly reconnects: number;
  /** the last event id seen, or null */
  readonly lastEventId: string | null;
  /** the last `sse-error` event's data, or null */
  readonly lastSseError: SseError | null;
  /** the EventSource in use; null while waiting to retry */
  readonly source: EventSource | null;
  close(): void;
  reconnect(): void;
}

/**
 * Subscribes to an event stream with EventSource, and takes over when the
 * browser gives up (backoff with jitter, resume with ?last_event_id=).
 * `handlers` maps event types (`message` for unnamed events) to functions.
 */
export declare function connect(
  url: string,
  handlers?: Record<string, EventHandler>,
  options?: ConnectOptions,
): Connection;

export declare function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;
export declare function withLastEventId(url: string, id: string | null, param?: string): string;

/** One event of a stream, as the parser dispatches it. */
export interface StreamEvent {
  /** the event type: `event:` or "message" */
  type: string;
  data: string;
  /** the stream's last event id at this event ("" if none) */
  id: string;
}

export interface ParserHandlers {
  onEvent?: (event: StreamEvent) => void;
  onRetry?: (ms: number) => void;
  onComment?: (text: string) => void;
}

export interface Parser {
  /** the next piece of decoded text, cut anywhere */
  feed(chunk: string): void;
  reset(options?: { keepId?: boolean }): void;
  readonly lastEventId: string;
}

export declare function createParser(handlers: ParserHandlers | ((event: StreamEvent) => void)): Parser;

export interface StreamRequestOptions {
  onOpen?: (response: Response) => void;
  onRetry?: (ms: number) => void;
  onComment?: (text: string) => void;
  fetch?: typeof fetch;
}

export interface StreamResult {
  status: number;
  headers: Headers;
  events: number;
  lastEventId: string;
}

export declare class StreamRequestError extends Error {
  status: number;
  body: string;
  response: Response | null;
}

/** fetch() whose answer is read as an event stream, event by event. */
export declare function streamRequest(
  url: string | URL | Request,
  init: RequestInit | undefined,
  onEvent: (event: StreamEvent) => void,
  options?: StreamRequestOptions,
): Promise<StreamResult>;
