// Node module hooks for the tests: the host serves client.js and msgpack.js side by side under
// `/.host/`, so client.js imports `./msgpack.js`; in the repository the bundle is in vendor/.
// (Registered by support.js.)

const client = new URL("../client.js", import.meta.url).href;
const vendored = new URL("../vendor/msgpack.js", import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (specifier === "./msgpack.js" && context.parentURL === client) {
    return { url: vendored, shortCircuit: true };
  }
  return next(specifier, context);
}
