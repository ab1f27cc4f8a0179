// Validates AsyncAPI documents with the official parser (npm @asyncapi/parser).
//
//   RUNNEL_NODE_TOOLS=$(scripts/node-tools.sh install) node scripts/asyncapi-validate.mjs FILE...
//
// Prints every diagnostic (errors and warnings) with its path; exits 1 if any document has
// an error, 2 on bad usage or an unreadable file, 0 when every document is valid.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

const tools = process.env.RUNNEL_NODE_TOOLS;
const files = process.argv.slice(2);
if (!tools || files.length === 0) {
  console.error('usage: RUNNEL_NODE_TOOLS=DIR node asyncapi-validate.mjs FILE...');
  process.exit(2);
}
// The parser lives in the tools cache, outside the clone: resolve it from there.
const require = createRequire(path.join(tools, 'package.json'));
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');
const parser = new Parser();

let failed = false;
for (const file of files) {
  let text;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    console.error(`${file}: cannot read: ${e.message}`);
    process.exit(2);
  }
  const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  for (const d of diagnostics) {
    const level = d.severity === DiagnosticSeverity.Error ? 'error' : 'warning';
    console.log(`${file}: ${level} ${d.code} at /${d.path.join('/')}: ${d.message}`);
  }
  if (errors.length > 0 || document === undefined) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} errors)`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}`);
  }
}
process.exit(failed ? 1 : 0);
