import { defineConfig } from "tsup";

// One bundle per format: ESM (dist/index.js) and CommonJS (dist/index.cjs),
// each with its declarations (index.d.ts, index.d.cts). Node 20 is the floor.
export default defineConfig({
  entry: ["src/index.ts"],
  format: ["esm", "cjs"],
  dts: true,
  sourcemap: true,
  clean: true,
  target: "node20",
  platform: "node",
  splitting: false,
  treeshake: true,
});
