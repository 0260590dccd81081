import { defineConfig } from "vitest/config";

// The tests run against a real nginx with the built module
// (test/setup/nginx.js starts it once for all files). The hook's tests
// choose jsdom with a comment at their top; the rest run in Node.
export default defineConfig({
  test: {
    include: ["test/**/*.test.js"],
    environment: "node",
    globalSetup: ["./test/setup/nginx.js"],
    testTimeout: 20000,
    hookTimeout: 30000,
    pool: "forks",
    poolOptions: { forks: { minForks: 1, maxForks: 2 } },
  },
});
