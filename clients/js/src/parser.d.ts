// Types for @ngx-sse/client/parser: the parser alone.
export { createParser } from "./index.js";
export type { StreamEvent, ParserHandlers, Parser } from "./index.js";
