import type { ConnectOptions, ConnectionState, Gap, SseError } from "./index.js";

export interface UseEventStreamOptions extends ConnectOptions {
  /** event types to listen for (default ["message"]) */
  events?: string[];
  onEvent?: (type: string, data: string, event: MessageEvent) => void;
}

export interface EventStreamSnapshot {
  state: ConnectionState;
  reconnects: number;
  lastEventId: string | null;
  lastEvent: { type: string; data: string; id: string | null } | null;
  gap: Gap | null;
  /** the last `sse-error` event (why the server ended the stream), or null */
  sseError: SseError | null;
  error: unknown;
  close: () => void;
}

/** connect() for React: opens on mount (or when url changes), closes on unmount; url null: no stream. */
export declare function useEventStream(url: string | null, options?: UseEventStreamOptions): EventStreamSnapshot;
