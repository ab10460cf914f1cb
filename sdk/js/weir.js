// Weir plugin helpers for JavaScript (componentize-js). Batches cross into a plugin column-wise (see
// wit/weir.wit); these helpers read them event by event and gather the answers back into columns.
//
// componentize-js takes a single source file, so a plugin's build.sh puts this file in front of the plugin's
// own (see plugins/examples/js-drop-canary/build.sh). Everything here is prefixed `Weir`.

const WeirKind = Object.freeze({ ABSENT: 0, NULL: 1, BOOLEAN: 2, INTEGER: 3, FLOAT: 4, TEXT: 5, JSON: 6 });
const weirDecoder = new TextDecoder();
const weirEncoder = new TextEncoder();

// Reads one column. `get(i)` answers `undefined` when the path is absent from event `i`, else `null`, a
// boolean, a number (integers beyond 2^53 stay BigInt), a string, or `{ json: "..." }` for objects and arrays.
class WeirColumn {
  constructor(column) {
    this.c = column;
  }
  text(i) {
    const o = this.c.text.offsets;
    return weirDecoder.decode(this.c.text.bytes.subarray(o[i], o[i + 1]));
  }
  get(i) {
    switch (this.c.kinds[i]) {
      case WeirKind.NULL: return null;
      case WeirKind.BOOLEAN: return this.c.integers[i] !== 0n;
      case WeirKind.INTEGER: {
        const n = this.c.integers[i];
        return n >= -9007199254740991n && n <= 9007199254740991n ? Number(n) : n;
      }
      case WeirKind.FLOAT: return this.c.floats[i];
      case WeirKind.TEXT: return this.text(i);
      case WeirKind.JSON: return { json: this.text(i) };
      default: return undefined;
    }
  }
}

// The read columns of a batch, and its size: `const b = new WeirBatch(batch); b.get(0, i)`.
class WeirBatch {
  constructor(batch) {
    this.length = batch.times.length;
    this.times = batch.times;
    this.fields = batch.fields.map((c) => new WeirColumn(c));
  }
  get(field, i) {
    return this.fields[field].get(i);
  }
}

// Builds one write column, row by row (rows never set are left as they were).
class WeirColumnBuilder {
  constructor() {
    this.kinds = [];
    this.integers = null;
    this.floats = null;
    this.texts = null;
  }
  put(row, value) {
    // The same row set again: the last value counts (as in the Rust SDK).
    if (this.kinds.length === row + 1) this.pop();
    while (this.kinds.length < row) this.push(WeirKind.ABSENT);
    if (value === undefined) this.push(WeirKind.ABSENT);
    else if (value === null) this.push(WeirKind.NULL);
    else if (typeof value === 'boolean') this.push(WeirKind.BOOLEAN, value ? 1n : 0n);
    else if (typeof value === 'bigint') this.push(WeirKind.INTEGER, value);
    else if (typeof value === 'number' && Number.isInteger(value)) this.push(WeirKind.INTEGER, BigInt(value));
    else if (typeof value === 'number') this.push(WeirKind.FLOAT, undefined, value);
    else if (typeof value === 'string') this.push(WeirKind.TEXT, undefined, undefined, value);
    else {
      // A JSON value as `get` gives it (`{json: "<text>"}`) is text already: stringified again, it would
      // become a string.
      const json = value.json ?? value;
      this.push(WeirKind.JSON, undefined, undefined, typeof json === 'string' ? json : JSON.stringify(json));
    }
  }
  pop() {
    this.kinds.pop();
    this.integers?.pop();
    this.floats?.pop();
    this.texts?.pop();
  }
  push(kind, int, float, text) {
    const row = this.kinds.length;
    if (int !== undefined && !this.integers) this.integers = new Array(row).fill(0n);
    if (float !== undefined && !this.floats) this.floats = new Array(row).fill(0);
    if (text !== undefined && !this.texts) this.texts = new Array(row).fill('');
    this.kinds.push(kind);
    if (this.integers) this.integers.push(int ?? 0n);
    if (this.floats) this.floats.push(float ?? 0);
    if (this.texts) this.texts.push(text ?? '');
  }
  finish(rows) {
    while (this.kinds.length < rows) this.push(WeirKind.ABSENT);
    const text = { bytes: new Uint8Array(), offsets: new Uint32Array() };
    if (this.texts) {
      const parts = this.texts.map((t) => weirEncoder.encode(t));
      const offsets = new Uint32Array(parts.length + 1);
      parts.forEach((p, i) => { offsets[i + 1] = offsets[i] + p.length; });
      const bytes = new Uint8Array(offsets[parts.length]);
      parts.forEach((p, i) => bytes.set(p, offsets[i]));
      text.bytes = bytes;
      text.offsets = offsets;
    }
    return {
      kinds: Uint8Array.from(this.kinds),
      integers: this.integers ? BigInt64Array.from(this.integers) : new BigInt64Array(),
      floats: this.floats ? Float64Array.from(this.floats) : new Float64Array(),
      text,
    };
  }
}

// Gathers the answer for a batch, event by event: `set(field, value)` for the next event, then one of `keep()`,
// `drop(rule)` or `quarantine(reason, checks)`. `finish()` returns the contract's `output`.
class WeirOutput {
  constructor() {
    this.verdicts = [];
    this.writes = [];
    this.rows = [];
  }
  set(field, value) {
    while (this.writes.length <= field) this.writes.push(new WeirColumnBuilder());
    this.writes[field].put(this.verdicts.length, value);
    return this;
  }
  keep() {
    this.verdicts.push({ tag: 'keep' });
    return this;
  }
  drop(rule) {
    this.verdicts.push({ tag: 'drop', val: rule });
    return this;
  }
  quarantine(reason, failedChecks = []) {
    this.verdicts.push({ tag: 'quarantine', val: { reason, failedChecks } });
    return this;
  }
  finish() {
    const rows = this.verdicts.length;
    return { verdicts: this.verdicts, writes: this.writes.map((w) => w.finish(rows)), rows: this.rows };
  }
}
