// Example Weir plugin in JavaScript: drops canary events and, when configured, events whose `type` is not in
// an allow-list. Config: {"types": ["edit", "new"]} (default: every type).
// Uses the helpers of sdk/js/weir.js (WeirBatch, WeirOutput), which build.sh puts in front of this file.
import { counterAdd } from 'weir:transform/metrics@0.2.0';

let allowedTypes = null;

export const transform = {
  manifest() {
    return {
      name: 'js-drop-canary',
      version: '0.1.0',
      kind: 'filter',
      description: 'Drops canary events and types outside an allow-list',
    };
  },

  init(config) {
    const parsed = JSON.parse(config || '{}');
    for (const key of Object.keys(parsed)) {
      if (key !== 'types') throw `unknown configuration key "${key}" (expected "types")`;
    }
    if (parsed.types !== undefined) {
      if (!Array.isArray(parsed.types)) throw 'configuration key "types" must be a list of strings';
      allowedTypes = new Set(parsed.types);
    }
    return {
      reads: ['meta.domain', 'type'],
      writes: [],
      needsPayload: false,
      needsAttributes: false,
      state: { keyed: false, snapshot: false },
      emits: [],
    };
  },

  process(batch) {
    const events = new WeirBatch(batch);
    const out = new WeirOutput();
    for (let i = 0; i < events.length; i++) {
      const [domain, type] = [events.get(0, i), events.get(1, i)];
      if (domain === 'canary') out.drop('canary');
      else if (allowedTypes && !allowedTypes.has(type)) out.drop('type');
      else out.keep();
    }
    counterAdd('batches', 1n);
    return out.finish();
  },

  onWatermark(_watermarkMs) {
    return [];
  },

  snapshot() {
    return new Uint8Array();
  },

  restore(_snapshot) {},
};
