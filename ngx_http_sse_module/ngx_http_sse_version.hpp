// The module's version: the one place it is defined. The Makefile reads it
// (make deb, make install), sse_status and the startup notice report it.
#pragma once

#define NGX_HTTP_SSE_VERSION "0.1.0"
