// @vitest-environment jsdom
import { act, cleanup, renderHook } from "@testing-library/react";
import { StrictMode } from "react";
import { afterEach, describe, expect, it } from "vitest";
import { useEventStream } from "../src/react.js";
import { EventSource, SUB, channel, publish, subscribers, until } from "./helpers.js";

afterEach(cleanup);

// renderHook with the hook's state read after React has settled.
async function waitFor(result, pred, what) {
  await until(async () => {
    let ok = false;
    await act(async () => {
      ok = pred(result.current);
    });
    return ok;
  }, what);
}

describe("useEventStream", () => {
  it("connects on mount, tracks events and closes on unmount", async () => {
    const ch = channel("react");
    const seen = [];
    const { result, unmount } = renderHook(() =>
      useEventStream(`${SUB}/events/${ch}`, {
        EventSource,
        events: ["chat", "message"],
        onEvent: (type, data) => seen.push([type, data]),
      }),
    );
    expect(result.current.state).toBe("connecting");
    await waitFor(result, (s) => s.state === "open", "open");
    await subscribers(ch, 1);

    const id1 = await publish(ch, '{"text":"hi"}', { event: "chat" });
    await waitFor(result, (s) => s.lastEventId === id1, "the first event");
    expect(result.current.lastEvent).toEqual({ type: "chat", data: '{"text":"hi"}', id: id1 });
    const id2 = await publish(ch, "plain");
    await waitFor(result, (s) => s.lastEventId === id2, "the second event");
    expect(result.current.lastEvent.type).toBe("message");
    expect(seen).toEqual([
      ["chat", '{"text":"hi"}'],
      ["message", "plain"],
    ]);
    expect(result.current.reconnects).toBe(0);

    unmount();
    await subscribers(ch, 0);
  });

  it("reconnects when the url changes, and not when callbacks do", async () => {
    const [a, b] = [channel("ra"), channel("rb")];
    const { result, rerender } = renderHook(
      ({ url, n }) => useEventStream(url, { EventSource, onEvent: () => n }),
      { initialProps: { url: `${SUB}/events/${a}`, n: 0 } },
    );
    await waitFor(result, (s) => s.state === "open", "open on a");
    await subscribers(a, 1);
    rerender({ url: `${SUB}/events/${a}`, n: 1 }); // a new callback only
    await subscribers(a, 1);
    rerender({ url: `${SUB}/events/${b}`, n: 1 });
    await subscribers(b, 1);
    await subscribers(a, 0);
    await waitFor(result, (s) => s.state === "open", "open on b");
    const id = await publish(b, "on b");
    await waitFor(result, (s) => s.lastEventId === id, "b's event");
  });

  it("stays closed without a url, and close() closes", async () => {
    const ch = channel("rc");
    const { result, rerender } = renderHook(({ url }) => useEventStream(url, { EventSource }), {
      initialProps: { url: null },
    });
    expect(result.current.state).toBe("closed");
    rerender({ url: `${SUB}/events/${ch}` });
    await waitFor(result, (s) => s.state === "open", "open");
    await subscribers(ch, 1);
    await act(async () => result.current.close());
    await waitFor(result, (s) => s.state === "closed", "closed");
    await subscribers(ch, 0);
  });

  it("survives StrictMode's double effects with one subscription", async () => {
    const ch = channel("rs");
    const { result, unmount } = renderHook(() => useEventStream(`${SUB}/events/${ch}`, { EventSource }), {
      wrapper: StrictMode,
    });
    await waitFor(result, (s) => s.state === "open", "open");
    await subscribers(ch, 1);
    unmount();
    await subscribers(ch, 0);
  });

  it("reports sse-gap", async () => {
    const ch = channel("rg");
    await publish(ch, "old");
    const { result } = renderHook(() =>
      useEventStream(`${SUB}/events/${ch}`, { EventSource, lastEventId: "1-1" }),
    );
    await waitFor(result, (s) => s.gap !== null, "the gap");
    expect(result.current.gap.reason).toBe("epoch");
  });

  it("exposes the module's sse-error events", async () => {
    const ch = channel("rerr");
    const reasons = [];
    const { result } = renderHook(() =>
      useEventStream(`${SUB}/flaky/${ch}`, { EventSource, onSseError: (i) => reasons.push(i.reason) }),
    );
    await waitFor(result, (s) => s.sseError !== null, "an sse-error");
    expect(result.current.sseError).toEqual({ reason: "stream_timeout" });
    expect(reasons[0]).toBe("stream_timeout");
  });
});
