// useEventStream(): connect() as a React hook.
//
//   const { state, reconnects, lastEventId, lastEvent } = useEventStream(
//     `/chat/events/${room}`,
//     { events: ["chat"], onEvent: (type, data, ev) => append(JSON.parse(data)) });
//
// The stream opens when the component mounts (or `url` changes) and closes
// when it unmounts. Pass `url = null` to stay disconnected. Callbacks may
// change on every render without reconnecting; only `url` and the list of
// event names decide the connection.

import { useEffect, useRef, useState, useCallback } from "react";
import { connect } from "./connect.js";

const IDLE = { state: "closed", reconnects: 0, lastEventId: null, lastEvent: null, gap: null, sseError: null, error: null };

/**
 * @param {string|null} url
 * @param {object} [options] connect() options, plus:
 * @param {string[]} [options.events=["message"]] event types to listen for
 * @param {(type: string, data: string, event: MessageEvent) => void} [options.onEvent]
 * @returns {{state: string, reconnects: number, lastEventId: string|null,
 *   lastEvent: {type: string, data: string, id: string}|null,
 *   gap: {requested: string, reason: string}|null,
 *   sseError: {reason: string}|null, error: any, close: () => void}}
 */
export function useEventStream(url, options = {}) {
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const connRef = useRef(null);
  const [snap, setSnap] = useState(() => (url ? { ...IDLE, state: "connecting" } : IDLE));

  const events = options.events && options.events.length ? options.events : ["message"];
  const eventsKey = events.join("\n");

  useEffect(() => {
    if (!url) {
      setSnap(IDLE);
      return undefined;
    }
    const names = eventsKey.split("\n");
    const handlers = {};
    for (const name of names) {
      handlers[name] = (data, ev) => {
        const id = ev.lastEventId || null;
        setSnap((s) => ({ ...s, lastEvent: { type: name, data, id }, lastEventId: id || s.lastEventId }));
        const cb = optionsRef.current.onEvent;
        if (cb) cb(name, data, ev);
      };
    }
    const { events: _e, onEvent: _o, onState, onGap, onError, onSseError, token, ...rest } = optionsRef.current;
    setSnap({ ...IDLE, state: "connecting" });
    const conn = connect(url, handlers, {
      ...rest,
      // The newest render's provider, called at each (re)connection.
      token: token ? () => (optionsRef.current.token || token)() : null,
      onSseError(info, ev) {
        setSnap((s) => ({ ...s, sseError: info }));
        const cb = optionsRef.current.onSseError;
        if (cb) cb(info, ev);
      },
      onState(state, c) {
        setSnap((s) => ({ ...s, state, reconnects: c.reconnects, lastEventId: c.lastEventId }));
        const cb = optionsRef.current.onState;
        if (cb) cb(state, c);
      },
      onGap(gap, ev) {
        setSnap((s) => ({ ...s, gap }));
        const cb = optionsRef.current.onGap;
        if (cb) cb(gap, ev);
      },
      onError(err, c) {
        setSnap((s) => (s.error === err ? s : { ...s, error: err }));
        const cb = optionsRef.current.onError;
        if (cb) cb(err, c);
      },
    });
    connRef.current = conn;
    return () => {
      connRef.current = null;
      conn.close();
    };
  }, [url, eventsKey]);

  const close = useCallback(() => {
    if (connRef.current) connRef.current.close();
  }, []);

  return { ...snap, close };
}
