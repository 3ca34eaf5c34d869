// What the page keeps in this browser profile (IndexedDB), nothing of which leaves it:
//   "taught"   the examples the page was taught ({ pixels: Float32Array(784), label }), so that
//              a reload keeps the user's hand (web/teach.js)
//   "samples"  drawings saved while no server API answers (the body POST /api/samples takes)
// Each store keeps records in insertion order under auto-incremented keys.

const DB_NAME = "mnist-wasm";
const DB_VERSION = 1;
export const STORES = ["taught", "samples"];

/** A request's result as a Promise. */
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/**
 * Open the page's database (created or upgraded on first use).
 * @returns {Promise<LocalStore>} rejects when this browser has no usable IndexedDB (e.g. some
 *   private modes): the caller keeps things in memory instead.
 */
export async function openLocal() {
  if (typeof indexedDB === "undefined") throw new Error("this browser has no IndexedDB");
  const request = indexedDB.open(DB_NAME, DB_VERSION);
  request.onupgradeneeded = () => {
    for (const name of STORES) {
      if (!request.result.objectStoreNames.contains(name)) {
        request.result.createObjectStore(name, { autoIncrement: true });
      }
    }
  };
  return new LocalStore(await done(request));
}

/** Records of the page's stores: all, add, clear. */
export class LocalStore {
  constructor(db) {
    this.db = db;
  }

  /** One transaction's store; resolves with `work(store)`'s request result once committed. */
  async run(name, mode, work) {
    const transaction = this.db.transaction(name, mode);
    const result = done(work(transaction.objectStore(name)));
    await new Promise((resolve, reject) => {
      transaction.oncomplete = resolve;
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error ?? new Error("transaction aborted"));
    });
    return result;
  }

  /** @returns {Promise<object[]>} every record of store `name`, oldest first */
  all(name) {
    return this.run(name, "readonly", (store) => store.getAll());
  }

  /** @returns {Promise<number>} the new record's key, once it is on disk */
  add(name, record) {
    return this.run(name, "readwrite", (store) => store.add(record));
  }

  /** Delete every record of store `name`. */
  clear(name) {
    return this.run(name, "readwrite", (store) => store.clear());
  }
}
