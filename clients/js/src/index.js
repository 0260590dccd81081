// @ngx-sse/client: the browser side of ngx_http_sse_module.
// No dependencies, plain ES modules: import it from a bundler, or serve
// src/ as is and `import { connect } from "./lib/index.js"` in a page.
// The React hook lives apart, in "./react.js", so that this entry point
// never needs React.

export { connect, backoffDelay, withLastEventId, STATES } from "./connect.js";
export { streamRequest, StreamRequestError } from "./stream.js";
export { createParser } from "./parser.js";
