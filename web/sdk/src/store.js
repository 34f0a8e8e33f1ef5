// Where a client keeps what must survive a restart, behind one small interface: four tables
// (`documents`: each document's Yjs state, generation and rebuild flag; `outbox`: local writes the
// relay has not acknowledged; `cursors`: the relay epoch and each document's sequence number;
// `profile`: the signed-in device) and an atomic `batch`, so a local write and its outbox entry are
// stored together or not at all. Values are structured-clonable (plain objects, arrays, strings,
// numbers, Uint8Array).
//
// MemoryStore keeps them in memory (tests, Node tools); IndexedDBStore in the browser's IndexedDB
// (tested in Node with the fake-indexeddb package).

/** @typedef {"documents" | "outbox" | "cursors" | "profile"} Table */
export const TABLES = /** @type {const} */ (["documents", "outbox", "cursors", "profile"]);

/** @typedef {{table: Table, key: string, value?: unknown}} StoreOp a put, or a delete when value is undefined */

/**
 * The store interface every backend implements; all methods are async.
 * @typedef {object} Store
 * @property {(table: Table, key: string) => Promise<any>} get the value, or undefined
 * @property {(table: Table) => Promise<Array<[string, any]>>} entries every key and value, keys in ascending order
 * @property {(ops: StoreOp[]) => Promise<void>} batch apply puts and deletes atomically
 * @property {() => Promise<void>} close
 */

/** @param {unknown} value */
const copy = (value) => (value === undefined ? undefined : structuredClone(value));

/** Keys sort as strings (outbox keys are zero-padded numbers, so they sort in write order). @param {[string, any]} a @param {[string, any]} b */
const byKey = (a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/** @implements {Store} */
export class MemoryStore {
  constructor() {
    /** @type {Map<Table, Map<string, unknown>>} */
    this.tables = new Map(TABLES.map((t) => [t, new Map()]));
  }

  /** @param {Table} table */
  table(table) {
    const t = this.tables.get(table);
    if (!t) throw new Error(`no table ${table}`);
    return t;
  }

  /** @param {Table} table @param {string} key */
  async get(table, key) {
    return copy(this.table(table).get(key));
  }

  /** @param {Table} table @returns {Promise<Array<[string, any]>>} */
  async entries(table) {
    return [...this.table(table)].map(([k, v]) => /** @type {[string, any]} */ ([k, copy(v)])).sort(byKey);
  }

  /** @param {StoreOp[]} ops */
  async batch(ops) {
    for (const op of ops) this.table(op.table); // all or nothing: check every table first
    for (const op of ops) {
      if (op.value === undefined) this.table(op.table).delete(op.key);
      else this.table(op.table).set(op.key, copy(op.value));
    }
  }

  async close() {}
}

/** @template T @param {IDBRequest<T>} request @returns {Promise<T>} */
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** @implements {Store} */
export class IndexedDBStore {
  /** @param {IDBDatabase} db */
  constructor(db) {
    this.db = db;
  }

  /**
   * Open (creating if needed) the database `name`, one object store per table.
   * @param {string} name @param {{indexedDB?: IDBFactory}} [options] the factory (default: the browser's)
   */
  static async open(name, { indexedDB = globalThis.indexedDB } = {}) {
    if (!indexedDB) throw new Error("IndexedDB is not available here");
    const request = indexedDB.open(name, 1);
    request.onupgradeneeded = () => {
      for (const t of TABLES) if (!request.result.objectStoreNames.contains(t)) request.result.createObjectStore(t);
    };
    return new IndexedDBStore(await done(request));
  }

  /** @param {Table} table @param {string} key */
  async get(table, key) {
    return done(this.db.transaction(table, "readonly").objectStore(table).get(key));
  }

  /** @param {Table} table @returns {Promise<Array<[string, any]>>} */
  async entries(table) {
    const store = this.db.transaction(table, "readonly").objectStore(table);
    const [keys, values] = await Promise.all([done(store.getAllKeys()), done(store.getAll())]);
    return keys.map((k, i) => /** @type {[string, any]} */ ([String(k), values[i]]));
  }

  /** @param {StoreOp[]} ops */
  async batch(ops) {
    if (ops.length === 0) return;
    const tx = this.db.transaction([...new Set(ops.map((op) => op.table))], "readwrite");
    const finished = new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve(undefined);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
    });
    for (const op of ops) {
      const store = tx.objectStore(op.table);
      if (op.value === undefined) store.delete(op.key);
      else store.put(op.value, op.key);
    }
    await finished;
  }

  async close() {
    this.db.close();
  }
}
