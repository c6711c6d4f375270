// Bundles the browser interop app (app.js) into OUTDIR with esbuild: index.html, app.js and the
// wa-sqlite wasm the in-memory adapter loads (next to the bundle: wa-sqlite.mjs finds it with
// `new URL('wa-sqlite.wasm', import.meta.url)`, and import.meta.url is the bundle's URL).
//
//   node build.mjs OUTDIR      prints {"event":"built","outdir":...,"ms":...} on stdout

import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

import { build } from 'esbuild'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = process.argv[2]
if (outdir === undefined) {
  console.error('usage: node build.mjs OUTDIR')
  process.exit(2)
}

const started = Date.now()
await mkdir(outdir, { recursive: true })
await build({
  entryPoints: [join(here, 'app.js')],
  outfile: join(outdir, 'app.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  // The `browser` export conditions of @livestore/sqlite-wasm (its wasm loader) apply.
  conditions: ['browser'],
  logLevel: 'warning',
  // adapter-web reads import.meta.env?.SSR (a Vite convention); leave it undefined.
  define: { 'import.meta.env': 'undefined' },
})

const require = createRequire(join(here, 'package.json'))
await copyFile(require.resolve('@livestore/wa-sqlite/dist/wa-sqlite.wasm'), join(outdir, 'wa-sqlite.wasm'))

await writeFile(
  join(outdir, 'index.html'),
  '<!doctype html>\n<html><head><meta charset="utf-8"><title>gateway browser interop</title>' +
    '<link rel="icon" href="data:,"></head>\n' +
    '<body><script type="module" src="./app.js"></script></body></html>\n',
)

process.stdout.write(`${JSON.stringify({ event: 'built', outdir: resolve(outdir), ms: Date.now() - started })}\n`)
