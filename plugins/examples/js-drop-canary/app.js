// Example Weir plugin in JavaScript: drops canary events and, when configured, events whose `type` is not in
// an allow-list. Config: {"types": ["edit", "new"]} (default: every type).
import { counterAdd } from 'weir:transform/metrics@0.1.0';

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

  process(events) {
    const outcomes = events.map((event) => {
      const [domain, type] = event.fields;
      if (domain && domain.tag === 'text' && domain.val === 'canary') {
        return { verdict: { tag: 'drop', val: 'canary' }, writes: [] };
      }
      if (allowedTypes && !(type && type.tag === 'text' && allowedTypes.has(type.val))) {
        return { verdict: { tag: 'drop', val: 'type' }, writes: [] };
      }
      return { verdict: { tag: 'keep' }, writes: [] };
    });
    counterAdd('batches', 1n);
    return { outcomes, rows: [] };
  },

  onWatermark(_watermarkMs) {
    return [];
  },

  snapshot() {
    return new Uint8Array();
  },

  restore(_snapshot) {},
};
