/**
 * Fuel for a policy's WASM: a rewrite of the module that counts down a global at the head of
 * every loop and at the entry of every function that could be on a cycle of calls, and when it
 * runs out either traps or, given a refuel import, asks the host for more (which may throw
 * instead; see withFuel for where). With it an evaluation can run on the calling thread and still
 * stop after a bounded amount of work, which is what the evaluator's fast path needs
 * (evaluator.ts): a WASM call cannot be interrupted from outside on its own thread, so without
 * fuel every evaluation had to go to another thread to be stoppable, and that hand-over cost
 * about as much as the evaluation itself on one CPU.
 *
 * A function entry or a loop iteration costs a unit, and one more for every INSTRUCTIONS_PER_UNIT
 * instructions of its straight-line code. Every unbounded run passes a loop head or goes round a
 * cycle of calls (a WASM function cannot jump backwards any other way), so those are counted where
 * they happen; the entries of the other functions are charged ahead, to the count before them
 * (see charges). A unit is still not a fixed time (a load that misses the cache costs more than an
 * add; fast-path.ts has figures). Bulk memory copies
 * and fills, whose cost grows with an operand, are refused.
 *
 * Only the code section changes, plus one global and some exports: no index of any existing
 * function, global or table moves, so the names section and the data stay valid as they are. The
 * refuel hook is a function the module already imports (for OPA, its builtin dispatcher), because
 * adding an import would move every function index. The module's own mutable globals are exported
 * too (GLOBAL_EXPORT_PREFIX + index), so that a host can put an instance back as it was after a
 * stopped call (fast-path.ts): a trap leaves the stack pointer mid-call.
 * Opcodes are decoded only to find where instructions begin; an opcode this decoder does not know
 * (SIMD, threads, exceptions: nothing `opa build` emits today) makes the rewrite refuse, and the
 * evaluator then simply keeps every evaluation on its thread. Block types are decoded as WASM 2.0
 * has them; a later proposal's (GC reference types) could be misread.
 */

/** Name of the exported mutable i32 global that holds the fuel left. */
export const FUEL_EXPORT = 'spawngate_fuel';
/** Each of the module's own mutable globals is exported under this prefix and its index. */
export const GLOBAL_EXPORT_PREFIX = 'spawngate_global_';

/**
 * A function the module imports, of type (i32, i32) -> i32, that the fuel check calls with
 * (arg, 0) when the fuel runs out: what it returns is the new fuel; to stop, it throws.
 */
export interface RefuelImport {
  module: string;
  name: string;
  arg: number;
}

export interface FuelOptions {
  /** Without it, or when the module does not import it with that type, running out traps. */
  refuel?: RefuelImport;
  /**
   * With a refuel import: how far below zero a loop may take the fuel before it traps (it asks
   * for no more itself, the next function entry does). Default 0.
   */
  loopGrace?: number;
}

export interface FueledModule {
  bytes: Uint8Array<ArrayBuffer>;
  /** Whether running out calls the refuel import (else it traps). */
  refuel: boolean;
  /** The export names of the module's own mutable globals. */
  globals: string[];
}

const MAGIC = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
const SECTION = { custom: 0, type: 1, import: 2, global: 6, export: 7, code: 10 } as const;
/** Sections in the order the binary format requires (custom ones may be anywhere). */
const ORDER = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];

// No parameter properties: tests run this file from source, where Node only strips types.
class Reader {
  readonly bytes: Uint8Array;
  readonly end: number;
  pos: number;
  constructor(bytes: Uint8Array, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.end = end;
    this.pos = start;
  }

  byte(): number {
    if (this.pos >= this.end) throw new Error(`unexpected end of the module at byte ${this.pos}`);
    return this.bytes[this.pos++]!;
  }

  u32(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      const b = this.byte();
      result |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result >>> 0;
      shift += 7;
      if (shift > 28) throw new Error(`a LEB128 integer at byte ${this.pos} is longer than 5 bytes`);
    }
  }

  /** Skips a LEB128 number of any width, signed or not. */
  skipLeb(): void {
    for (let i = 0; i < 10; i++) if ((this.byte() & 0x80) === 0) return;
    throw new Error(`a LEB128 integer at byte ${this.pos} is longer than 10 bytes`);
  }

  skip(n: number): void {
    if (this.pos + n > this.end) throw new Error(`unexpected end of the module at byte ${this.pos}`);
    this.pos += n;
  }
}

function leb(value: number): number[] {
  const out: number[] = [];
  let v = value >>> 0;
  do {
    let b = v & 0x7f;
    v >>>= 7;
    if (v !== 0) b |= 0x80;
    out.push(b);
  } while (v !== 0);
  return out;
}

function sleb(value: number): number[] {
  const out: number[] = [];
  let v = value | 0;
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

function name(text: string): number[] {
  const bytes = Buffer.from(text, 'utf8');
  return [...leb(bytes.length), ...bytes];
}

interface Section {
  id: number;
  /** The section's content, without its id and size. */
  body: Uint8Array;
}

function sectionsOf(bytes: Uint8Array): Section[] {
  if (bytes.length < 8 || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error('not a WebAssembly 1.0 binary module');
  const r = new Reader(bytes, 8);
  const sections: Section[] = [];
  while (r.pos < bytes.length) {
    const id = r.byte();
    const size = r.u32();
    const start = r.pos;
    r.skip(size);
    sections.push({ id, body: bytes.subarray(start, start + size) });
  }
  return sections;
}

/** The block type after block, loop and if: the empty type, a value type, or a type index (s33). */
function skipBlockType(r: Reader): void {
  const b = r.bytes[r.pos];
  if (b === undefined) throw new Error(`unexpected end of the module at byte ${r.pos}`);
  if (b === 0x40 || (b >= 0x6f && b <= 0x7f)) r.pos++;
  else r.skipLeb();
}

/** What scan finds in one function body. */
interface Body {
  /** Where each loop's body begins (right after `loop <blocktype>`, where a branch back to the loop lands). */
  heads: number[];
  /** Every direct call site: the function it calls, and the innermost loop it is in (an index into heads, or -1). */
  sites: { callee: number; loop: number }[];
  /** Whether it calls through a table, whose target this rewrite does not know. */
  indirect: boolean;
  /** For each loop in heads: whether it makes a call of any kind that is in no loop nested in it. */
  loopCalls: boolean[];
  /** For each loop in heads: its instructions that are in no loop nested in it. */
  loopSizes: number[];
  /** Its instructions that are in no loop. */
  size: number;
}

/** Walks one function body's instructions (from after its locals to its end). */
function scan(r: Reader): Body {
  const heads: number[] = [];
  const sites: Body['sites'] = [];
  const loopCalls: boolean[] = [];
  const loopSizes: number[] = [];
  let size = 0;
  let indirect = false;
  // For each enclosing block, innermost last: the innermost loop there (its index in heads), or -1.
  const open: number[] = [];
  while (r.pos < r.end) {
    const at = r.pos;
    const op = r.byte();
    const inner = open.length > 0 ? open[open.length - 1]! : -1;
    if (inner >= 0) loopSizes[inner]!++;
    else size++;
    if (op === 0x03) {
      skipBlockType(r);
      open.push(heads.length);
      heads.push(r.pos);
      loopCalls.push(false);
      loopSizes.push(0);
    } else if (op === 0x02 || op === 0x04) {
      skipBlockType(r);
      open.push(inner);
    } else if (op === 0x0b) open.pop();
    else if (op === 0x00 || op === 0x01 || op === 0x05 || op === 0x0f || op === 0x1a || op === 0x1b || op === 0xd1) {
      // no immediate
    } else if (op === 0x10 || op === 0x12) {
      sites.push({ callee: r.u32(), loop: inner });
      if (inner >= 0) loopCalls[inner] = true;
    } else if (op === 0x0c || op === 0x0d || (op >= 0x20 && op <= 0x26) || op === 0xd2) r.skipLeb();
    else if (op === 0x0e) {
      const n = r.u32();
      for (let i = 0; i <= n; i++) r.skipLeb();
    } else if (op === 0x11 || op === 0x13) {
      indirect = true;
      if (inner >= 0) loopCalls[inner] = true;
      r.skipLeb();
      r.skipLeb();
    } else if (op === 0x1c) {
      const n = r.u32();
      r.skip(n);
    } else if (op >= 0x28 && op <= 0x3e) {
      // memarg: alignment (bit 6 set: a memory index follows), then offset
      const align = r.u32();
      if (align & 0x40) r.skipLeb();
      r.skipLeb();
    } else if (op === 0x3f || op === 0x40) r.skipLeb();
    else if (op === 0x41 || op === 0x42) r.skipLeb();
    else if (op === 0x43) r.skip(4);
    else if (op === 0x44) r.skip(8);
    else if (op >= 0x45 && op <= 0xc4) {
      // numeric and sign-extension operators: no immediate
    } else if (op === 0xd0) r.skip(1);
    else if (op === 0xfc) {
      const sub = r.u32();
      if (sub <= 7) {
        // saturating truncations
      } else if (sub === 9 || sub === 13) r.skipLeb();
      else if (sub === 16) r.skipLeb();
      // memory.init/copy/fill and table.init/copy/grow/fill do work in proportion to an operand,
      // which one count per instruction would not bound well.
      else throw new Error(`unsupported instruction 0xfc ${sub} at byte ${at}: its cost is not metered`);
    } else throw new Error(`unsupported instruction 0x${op.toString(16)} at byte ${at}`);
  }
  return { heads, sites, indirect, loopCalls, loopSizes, size };
}

interface ImportEntry {
  module: string;
  name: string;
  kind: number;
  /** For a function: its type index. */
  type: number;
}

function readImports(body: Uint8Array): ImportEntry[] {
  const r = new Reader(body);
  const entries: ImportEntry[] = [];
  const text = () => {
    const n = r.u32();
    const start = r.pos;
    r.skip(n);
    return Buffer.from(body.subarray(start, start + n)).toString('utf8');
  };
  for (let n = r.u32(); n > 0; n--) {
    const module = text();
    const field = text();
    const k = r.byte();
    let type = -1;
    if (k === 0x00) type = r.u32();
    else if (k === 0x01) {
      r.skip(1);
      skipLimits(r);
    } else if (k === 0x02) skipLimits(r);
    else if (k === 0x03) r.skip(2);
    else if (k === 0x04) {
      r.skip(1);
      r.skipLeb();
    } else throw new Error(`unsupported import kind ${k}`);
    entries.push({ module, name: field, kind: k, type });
  }
  return entries;
}

/** Whether type `index` of the type section is (i32, i32) -> i32. */
function isRefuelType(body: Uint8Array, index: number): boolean {
  const r = new Reader(body);
  const count = r.u32();
  for (let i = 0; i < count; i++) {
    if (r.byte() !== 0x60) return false;
    const params: number[] = [];
    for (let n = r.u32(); n > 0; n--) params.push(r.byte());
    const results: number[] = [];
    for (let n = r.u32(); n > 0; n--) results.push(r.byte());
    if (i === index) return params.length === 2 && params[0] === 0x7f && params[1] === 0x7f && results.length === 1 && results[0] === 0x7f;
  }
  return false;
}

/** The indices of the module's own mutable globals (after the imported ones). */
function mutableGlobals(body: Uint8Array, firstIndex: number): number[] {
  const r = new Reader(body);
  const out: number[] = [];
  const count = r.u32();
  for (let i = 0; i < count; i++) {
    const type = r.byte();
    const mutable = r.byte() === 0x01;
    if (mutable && !(type >= 0x7c && type <= 0x7f)) throw new Error(`global ${firstIndex + i} is mutable and not a number, which a host cannot save and restore`);
    if (mutable) out.push(firstIndex + i);
    // Its constant initialiser, to its end.
    for (;;) {
      const op = r.byte();
      if (op === 0x0b) break;
      if (op === 0x41 || op === 0x42 || op === 0x23 || op === 0xd2) r.skipLeb();
      else if (op === 0x43) r.skip(4);
      else if (op === 0x44) r.skip(8);
      else if (op === 0xd0) r.skip(1);
      else if (op !== 0x6a && op !== 0x6b && op !== 0x6c && op !== 0x7c && op !== 0x7d && op !== 0x7e) throw new Error(`unsupported instruction 0x${op.toString(16)} in the initialiser of global ${firstIndex + i}`);
    }
  }
  return out;
}

function skipLimits(r: Reader): void {
  const flags = r.byte();
  r.skipLeb();
  if (flags & 0x01) r.skipLeb();
}

function vecCount(body: Uint8Array): { count: number; rest: Uint8Array } {
  const r = new Reader(body);
  const count = r.u32();
  return { count, rest: body.subarray(r.pos) };
}

/**
 * A fuel check: fuel -= cost; if fuel < floor, fuel = refuel(arg, 0), or trap without a refuel.
 * Stack-neutral, so it fits at a function's start and at a loop's head whatever their types.
 */
function fuelCheck(global: number, cost: number, floor: number, refuel: { func: number; arg: number } | null): Uint8Array {
  const g = leb(global);
  const out = refuel ? [0x41, ...sleb(refuel.arg), 0x41, 0x00, 0x10, ...leb(refuel.func), 0x24, ...g] : [0x00];
  return Uint8Array.from([0x23, ...g, 0x41, ...sleb(cost), 0x6b, 0x24, ...g, 0x23, ...g, 0x41, ...sleb(floor), 0x48, 0x04, 0x40, ...out, 0x0b]);
}

/**
 * How the checks are made: one at an entry, or at the head of a loop that makes calls, may refuel;
 * one at the head of a loop that makes none traps past its floor.
 */
interface Checks {
  entry(cost: number): Uint8Array;
  loop(cost: number, calls: boolean): Uint8Array;
}

/**
 * The most units an uncounted function may take (its own entry and the uncounted calls below it)
 * before its caller's count; see charges.
 */
export const MAX_UNCOUNTED_UNITS = 8;

/**
 * A loop iteration or a function entry is charged a unit more for every so many of its
 * instructions (those of a function outside its loops, those of a loop outside the loops in it),
 * so that a unit stands for a bounded stretch of code: between two looks at the clock a slice of
 * units runs, and a loop that makes no call runs up to the grace of them (withFuel). Most of OPA's
 * runtime helpers and loops are shorter than this; a module built with one huge body is not.
 */
export const INSTRUCTIONS_PER_UNIT = 64;

/** The units one run through `size` instructions of straight-line code is charged. */
const units = (size: number) => 1 + Math.floor(size / INSTRUCTIONS_PER_UNIT);

/** What each function's entry and each of its loop heads take from the fuel; 0: not counted. */
interface Charges {
  entry: number;
  loops: number[];
}

/**
 * What every entry and loop head costs (see INSTRUCTIONS_PER_UNIT for what a unit is). Where an
 * entry is not counted where it happens, it is charged ahead, at the count that precedes it.
 *
 * Every unbounded run passes a loop head or goes round a cycle of calls, so loop heads are all
 * counted, and function entries need be counted only where a cycle could pass them. A function is
 * left uncounted when it is in no cycle of direct calls and calls nothing through a table or an
 * import (whose targets this rewrite cannot follow: counting the caller puts a count on any cycle
 * through them), and when it takes, with the uncounted calls below it outside its loops, at most
 * MAX_UNCOUNTED_UNITS. Those units are charged where the call that leads to them is: at the
 * enclosing loop's head for a call in a loop, at the caller's entry otherwise (each call site
 * once, taken or not: an upper bound). So the fuel still bounds the code run, a unit for a bounded
 * stretch of it.
 *
 * OPA's hot helpers (object lookups and inserts, the allocator) call a few others and are entered
 * thousands of times an evaluation: a count at each of their entries cost the shipped policy 4-6%.
 */
function charges(bodies: Body[], importedFunctions: number): Charges[] {
  const n = bodies.length;
  const out: Charges[] = bodies.map((b) => ({ entry: 1, loops: b.loopSizes.map(units) }));
  /** Units a call to the function takes before the next count: 0 for one counted itself. */
  const weight = new Array<number>(n).fill(0);
  const local = (callee: number) => callee - importedFunctions;
  const own = (callee: number) => local(callee) >= 0 && local(callee) < n;
  const settle = (component: number[]) => {
    const cyclic = component.length > 1 || bodies[component[0]!]!.sites.some((site) => local(site.callee) === component[0]);
    for (const f of component) {
      const body = bodies[f]!;
      const charge = out[f]!;
      let outside = units(body.size);
      for (const site of body.sites) {
        const w = own(site.callee) ? weight[local(site.callee)]! : 0;
        if (site.loop < 0) outside += w;
        else charge.loops[site.loop]! += w;
      }
      const free = !cyclic && !body.indirect && body.sites.every((site) => own(site.callee)) && outside <= MAX_UNCOUNTED_UNITS;
      charge.entry = free ? 0 : outside;
      weight[f] = free ? outside : 0;
    }
  };
  // Tarjan's strongly connected components over the direct calls between the module's own
  // functions; they come out callees first, which is the order the weights need. Iterative, so a
  // deep call graph cannot overflow the host's stack.
  const index = new Array<number>(n).fill(-1);
  const low = new Array<number>(n).fill(0);
  const onStack = new Array<boolean>(n).fill(false);
  const stack: number[] = [];
  let next = 0;
  for (let root = 0; root < n; root++) {
    if (index[root] !== -1) continue;
    const frames: { f: number; i: number }[] = [{ f: root, i: 0 }];
    index[root] = low[root] = next++;
    stack.push(root);
    onStack[root] = true;
    while (frames.length > 0) {
      const frame = frames[frames.length - 1]!;
      const sites = bodies[frame.f]!.sites;
      if (frame.i < sites.length) {
        const callee = sites[frame.i++]!.callee;
        if (!own(callee)) continue;
        const c = local(callee);
        if (index[c] === -1) {
          index[c] = low[c] = next++;
          stack.push(c);
          onStack[c] = true;
          frames.push({ f: c, i: 0 });
        } else if (onStack[c]) low[frame.f] = Math.min(low[frame.f]!, index[c]!);
        continue;
      }
      frames.pop();
      const parent = frames[frames.length - 1];
      if (parent) low[parent.f] = Math.min(low[parent.f]!, low[frame.f]!);
      if (low[frame.f] === index[frame.f]) {
        const component: number[] = [];
        let f: number;
        do {
          f = stack.pop()!;
          onStack[f] = false;
          component.push(f);
        } while (f !== frame.f);
        settle(component);
      }
    }
  }
  return out;
}

function instrumentCode(body: Uint8Array, checks: Checks, importedFunctions: number): Uint8Array {
  const r = new Reader(body);
  const functions = r.u32();
  const chunks: Uint8Array[] = [Uint8Array.from(leb(functions))];
  const found: { start: number; codeStart: number; end: number; body: Body }[] = [];
  for (let f = 0; f < functions; f++) {
    const size = r.u32();
    const start = r.pos;
    const end = start + size;
    const fr = new Reader(body, start, end);
    for (let groups = fr.u32(); groups > 0; groups--) {
      fr.skipLeb();
      fr.skip(1);
    }
    const codeStart = fr.pos;
    found.push({ start, codeStart, end, body: scan(fr) });
    r.pos = end;
  }
  const charged = charges(
    found.map((f) => f.body),
    importedFunctions,
  );
  found.forEach(({ start, codeStart, end, body: { heads, loopCalls } }, f) => {
    const charge = charged[f]!;
    const parts: Uint8Array[] = [body.subarray(start, codeStart)];
    if (charge.entry > 0) parts.push(checks.entry(charge.entry));
    let from = codeStart;
    heads.forEach((head, i) => {
      parts.push(body.subarray(from, head), checks.loop(charge.loops[i]!, loopCalls[i]!));
      from = head;
    });
    parts.push(body.subarray(from, end));
    chunks.push(Uint8Array.from(leb(parts.reduce((n, p) => n + p.length, 0))), ...parts);
  });
  return concat(chunks);
}

function concat(chunks: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/**
 * The module with fuel: a new exported mutable i32 global FUEL_EXPORT, counted down by the charge
 * of every loop iteration and of every counted function entry (charges). Set it before each call.
 * Without a refuel import, the first count past zero traps (a WebAssembly.RuntimeError,
 * "unreachable"). With one (options.refuel), a counted entry past zero calls it for more, and so
 * does the head of a loop that makes calls; the head of a loop that makes none traps once the fuel
 * is below -loopGrace. A call in the check of every loop made the shipped policy's evaluations
 * 14% slower in V8: its tightest loops (hashing, comparing and copying bytes) call nothing, and
 * cost no more than their few instructions an iteration, so the grace bounds them in time too.
 * Throws when the module uses an instruction this rewrite does not know.
 */
export function withFuel(bytes: Uint8Array, options: FuelOptions = {}): FueledModule {
  const sections = sectionsOf(bytes);
  if (!sections.some((s) => s.id === SECTION.code)) throw new Error('the module has no code section');
  const importSection = sections.find((s) => s.id === SECTION.import);
  const types = sections.find((s) => s.id === SECTION.type);
  const globals = sections.find((s) => s.id === SECTION.global);
  const imports = importSection ? readImports(importSection.body) : [];
  const importedGlobals = imports.filter((i) => i.kind === 0x03).length;
  const global = importedGlobals + (globals ? vecCount(globals.body).count : 0);
  const own = globals ? mutableGlobals(globals.body, importedGlobals) : [];
  const functions = imports.filter((i) => i.kind === 0x00);
  const wanted = options.refuel;
  const hook = wanted ? functions.findIndex((f) => f.module === wanted.module && f.name === wanted.name) : -1;
  const refuel = wanted && hook >= 0 && types && isRefuelType(types.body, functions[hook]!.type) ? { func: hook, arg: wanted.arg } : null;
  const loopFloor = refuel ? -(options.loopGrace ?? 0) : 0;
  const checks: Checks = {
    entry: (cost) => fuelCheck(global, cost, 0, refuel),
    loop: (cost, calls) => (calls && refuel ? fuelCheck(global, cost, 0, refuel) : fuelCheck(global, cost, loopFloor, null)),
  };
  const out: Section[] = [];
  const added = { global: false, export: false };
  // Starts full, so the module's own start-up code (and any caller that never sets it) runs as before.
  const fuelGlobal = [0x7f, 0x01, 0x41, 0xff, 0xff, 0xff, 0xff, 0x07, 0x0b];
  const newExports = [[...name(FUEL_EXPORT), 0x03, ...leb(global)], ...own.map((g) => [...name(`${GLOBAL_EXPORT_PREFIX}${g}`), 0x03, ...leb(g)])];
  const rank = (id: number) => ORDER.indexOf(id);
  /** Adds the new sections that must come before a section of this id, if they are still missing. */
  const before = (id: number) => {
    if (!added.global && rank(id) > rank(SECTION.global)) {
      out.push({ id: SECTION.global, body: Uint8Array.from([...leb(1), ...fuelGlobal]) });
      added.global = true;
    }
    if (!added.export && rank(id) > rank(SECTION.export)) {
      out.push({ id: SECTION.export, body: Uint8Array.from([...leb(newExports.length), ...newExports.flat()]) });
      added.export = true;
    }
  };
  for (const section of sections) {
    if (section.id !== SECTION.custom) before(section.id);
    if (section.id === SECTION.global) {
      const { count, rest } = vecCount(section.body);
      out.push({ id: section.id, body: Uint8Array.from([...leb(count + 1), ...rest, ...fuelGlobal]) });
      added.global = true;
    } else if (section.id === SECTION.export) {
      const { count, rest } = vecCount(section.body);
      out.push({ id: section.id, body: Uint8Array.from([...leb(count + newExports.length), ...rest, ...newExports.flat()]) });
      added.export = true;
    } else if (section.id === SECTION.code) {
      out.push({ id: section.id, body: instrumentCode(section.body, checks, functions.length) });
    } else out.push(section);
  }
  const result = concat([Uint8Array.from(MAGIC), ...out.flatMap((section) => [Uint8Array.from([section.id, ...leb(section.body.length)]), section.body])]);
  return { bytes: result, refuel: refuel !== null, globals: own.map((g) => `${GLOBAL_EXPORT_PREFIX}${g}`) };
}
