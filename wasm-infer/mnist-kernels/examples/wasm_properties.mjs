// Run the kernels' property tests in a wasm module built from examples/wasm_properties.rs.
//
//   node [--experimental-wasm-relaxed-simd] wasm_properties.mjs MODULE.wasm [SEED] [CASES]
//
// Node 20 validates relaxed SIMD only with --experimental-wasm-relaxed-simd (later versions by
// default). Prints the module's report; exits 1 when a case failed, when the module traps, or
// when this engine cannot compile it.
import { readFile } from "node:fs/promises";

const [path, seed = "2026", cases = "100"] = process.argv.slice(2);
if (!path) {
  console.error("usage: node wasm_properties.mjs MODULE.wasm [SEED] [CASES]");
  process.exit(2);
}
const bytes = await readFile(path);
if (!WebAssembly.validate(bytes)) {
  console.error(
    `${path} does not validate in this engine (relaxed SIMD needs Node 20's ` +
      "--experimental-wasm-relaxed-simd, or a later Node)",
  );
  process.exit(1);
}
let memory;
const decoder = new TextDecoder();
const { instance } = await WebAssembly.instantiate(bytes, {
  env: {
    report(ptr, len) {
      console.log(decoder.decode(new Uint8Array(memory.buffer, ptr, len)));
    },
  },
});
memory = instance.exports.memory;
const start = performance.now();
let failed;
try {
  failed = instance.exports.run_property_tests(BigInt(seed), Number(cases));
} catch (error) {
  console.error(`the module trapped: ${error}`);
  process.exit(1);
}
console.log(`(${((performance.now() - start) / 1000).toFixed(1)} s in wasm)`);
process.exit(failed === 0 ? 0 : 1);
